"""Authenticated keys are cached per process; every change still applies to the
very next request, in this process and in others."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import ApiKey, Tenant
from accounts.services import api_key_authenticate, api_key_issue, api_key_revoke, api_key_rotate
from billing.models import KeyLimits, Plan
from billing.services import limits_set, plan_assign

pytestmark = pytest.mark.django_db


def key_client(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def key_lookups(queries) -> int:
    return sum('FROM "accounts_apikey"' in q["sql"] for q in queries)


@pytest.fixture
def issued(tenant, gemma):
    key, raw = api_key_issue(tenant=tenant, name="cached")
    client = key_client(raw)
    assert client.get("/v1/models").status_code == 200  # now in this process's cache
    return key, raw, client


def test_a_cached_key_is_not_looked_up_again(issued):
    _, raw, client = issued
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/v1/models").status_code == 200
        assert api_key_authenticate(raw=raw) is not None
    assert key_lookups(queries.captured_queries) == 0


def test_a_wrong_secret_with_a_cached_prefix_is_refused(issued):
    _key, raw, _client = issued
    assert key_client(raw[:-2] + "xx").get("/v1/models").status_code == 401


def test_revoked_key_gets_401_on_the_very_next_request(issued):
    key, _, client = issued
    api_key_revoke(api_key=key)
    r = client.get("/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_revoking_through_the_api_stops_the_key_at_once(issued, tenant):
    key, _, client = issued
    _, manager = api_key_issue(tenant=tenant, scopes=["keys:manage"])
    r = key_client(manager).post(f"/api/tenants/acme/keys/{key.prefix}/revoke/")
    assert r.status_code == 200, r.content
    assert client.get("/v1/models").status_code == 401


def test_a_rotated_key_stops_when_its_grace_ends(issued):
    key, _, client = issued
    _new_key, new_raw = api_key_rotate(api_key=key, grace=timedelta(0))
    assert client.get("/v1/models").status_code == 401
    assert key_client(new_raw).get("/v1/models").status_code == 200


def test_a_revoke_rolled_back_leaves_the_key_working(issued):
    key, _, client = issued
    with pytest.raises(RuntimeError), transaction.atomic():
        api_key_revoke(api_key=ApiKey.objects.get(pk=key.pk))
        raise RuntimeError
    assert client.get("/v1/models").status_code == 200


def test_deactivating_the_tenant_stops_its_cached_keys(issued, tenant):
    _, _, client = issued
    tenant.is_active = False
    tenant.save()
    assert client.get("/v1/models").status_code == 401


def test_deleting_the_tenant_stops_its_cached_keys(issued, tenant):
    _, _, client = issued
    Tenant.objects.filter(pk=tenant.pk).delete()
    assert client.get("/v1/models").status_code == 401


def test_scope_change_applies_to_the_next_request(issued):
    key, _, client = issued
    key = ApiKey.objects.get(pk=key.pk)
    key.scopes = ["usage:read"]
    key.save()
    assert client.get("/v1/models").status_code == 403


def test_tenant_limits_apply_to_the_next_request(issued, tenant):
    _, _, client = issued
    call_command("set_quota", "--tenant", "acme", "--rpm", "7", stdout=StringIO())
    assert client.get("/v1/models")["x-ratelimit-limit-requests"] == "7"
    limits_set(tenant=tenant, rpm=5)
    assert client.get("/v1/models")["x-ratelimit-limit-requests"] == "5"


def test_key_limits_apply_to_the_next_request(issued, tenant):
    key, _, client = issued
    limits_set(tenant=tenant, api_key=key, rpm=3)
    assert client.get("/v1/models")["x-ratelimit-limit-requests"] == "3"
    KeyLimits.objects.filter(api_key=key).delete()
    assert "x-ratelimit-limit-requests" not in client.get("/v1/models")


def test_plan_edits_apply_to_the_next_request_of_every_tenant_on_it(issued, tenant):
    _, _, client = issued
    plan = Plan.objects.create(name="team", rpm=100)
    plan_assign(tenant=tenant, plan=plan)
    assert client.get("/v1/models")["x-ratelimit-limit-requests"] == "100"
    plan.rpm = 40
    plan.save()  # as the admin does
    assert client.get("/v1/models")["x-ratelimit-limit-requests"] == "40"


def test_writes_around_the_signals_are_seen_once_the_entry_is_old(issued, settings, monkeypatch):
    key, _, client = issued
    from django.utils import timezone

    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert client.get("/v1/models").status_code == 200  # not seen yet: no signal fired
    import accounts.generations as generations

    later = generations.time.monotonic() + settings.LLMSITE_KEY_CACHE_SECONDS + 1
    monkeypatch.setattr(generations.time, "monotonic", lambda: later)
    assert client.get("/v1/models").status_code == 401


def test_no_cache_when_its_lifetime_is_zero(tenant, gemma, settings):
    settings.LLMSITE_KEY_CACHE_SECONDS = 0
    _key, raw = api_key_issue(tenant=tenant)
    client = key_client(raw)
    assert client.get("/v1/models").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/v1/models").status_code == 200
    assert key_lookups(queries.captured_queries) == 1


# -- across processes ----------------------------------------------------------------
def _child(raw: str, conn) -> None:
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    while conn.recv() == "go":
        conn.send(client.get("/v1/models").status_code)
    connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_revocation_reaches_another_process_cache_at_once(gemma):
    tenant = Tenant.objects.create(slug="elsewhere", name="Elsewhere")
    key, raw = api_key_issue(tenant=tenant)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    connections.close_all()  # the child opens its own connection
    process = ctx.Process(target=_child, args=(raw, child))
    process.start()
    try:
        for _ in range(3):  # the child's cache holds the key now
            parent.send("go")
            assert parent.recv() == 200
        limits_set(tenant=tenant, rpm=100)
        api_key_revoke(api_key=key)
        parent.send("go")
        assert parent.recv() == 401
    finally:
        parent.send("stop")
        process.join(60)
    assert process.exitcode == 0
