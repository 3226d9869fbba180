from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from accounts.services import api_key_issue
from billing.models import KeyLimits, Plan, TenantBilling, UsageRecord
from billing.quota import reset_text
from billing.services import plan_assign
from tests.conftest import quota_backends

pytestmark = pytest.mark.django_db


@pytest.fixture(params=quota_backends())
def backend(request, settings, fresh_minute):
    settings.LLMSITE_QUOTA_BACKEND = request.param
    return request.param


def complete(client, **extra):
    body = {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    body.update(extra)
    return client.post("/v1/completions", body, format="json")


def test_rpm_limit_refuses_with_429_retry_after_and_headers(backend, client, tenant):
    call_command("set_quota", "--tenant", "acme", "--rpm", "2", stdout=StringIO())
    first = client.get("/v1/models")
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-reset-requests"].endswith("s")
    assert client.get("/v1/models")["x-ratelimit-remaining-requests"] == "0"
    refused = client.get("/v1/models")
    assert refused.status_code == 429
    assert refused["x-ratelimit-limit-requests"] == "2"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    err = refused.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert 1 <= int(refused["Retry-After"]) <= 60
    statuses = list(UsageRecord.objects.order_by("id").values_list("status", flat=True))
    assert statuses == ["ok", "ok", "rejected"]


def test_token_quota_counts_prompt_plus_max_tokens_then_settles(backend, client, tenant):
    call_command("set_quota", "--tenant", "acme", "--tpm", "1000", stdout=StringIO())
    r = complete(client, max_tokens=5)
    usage = r.json()["usage"]
    # After settling, only the real tokens remain counted.
    assert int(r["x-ratelimit-limit-tokens"]) == 1000
    r2 = complete(client, max_tokens=5)
    remaining = int(r2["x-ratelimit-remaining-tokens"])
    # The second reservation is made on top of the first request's settled total.
    assert remaining == 1000 - usage["total_tokens"] - (usage["prompt_tokens"] + 5)


def test_daily_token_quota_is_insufficient_quota(backend, client, tenant):
    call_command("set_quota", "--tenant", "acme", "--tokens-per-day", "10", stdout=StringIO())
    r = complete(client, max_tokens=50)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert r.json()["error"]["type"] == "insufficient_quota"


def test_key_limits_tighten_the_tenant_plan(backend, tenant, gemma):
    plan = Plan.objects.create(name="team", rpm=100)
    plan_assign(tenant=tenant, plan=plan)
    key, raw = api_key_issue(tenant=tenant)
    call_command(
        "set_quota", "--tenant", "acme", "--key-prefix", key.prefix, "--rpm", "1", stdout=StringIO()
    )
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert c.get("/v1/models")["x-ratelimit-limit-requests"] == "1"
    assert c.get("/v1/models").status_code == 429
    assert KeyLimits.objects.get(api_key=key).rpm == 1


def test_plan_changes_take_effect_on_the_next_request(backend, client, tenant):
    plan_assign(tenant=tenant, plan=Plan.objects.create(name="tiny", rpm=1))
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models").status_code == 429
    plan_assign(tenant=tenant, plan=Plan.objects.create(name="big", rpm=50))
    assert client.get("/v1/models").status_code == 200


def test_budget_refuses_when_the_estimate_would_overspend(backend, client, tenant, gemma):
    call_command(
        "set_price", "gemma-3-270m", "--prompt", "1000", "--completion", "1000", stdout=StringIO()
    )
    call_command("set_quota", "--tenant", "acme", "--budget", "0.01", stdout=StringIO())
    # 1000 per 1M tokens = 0.001 per token: 50 completion tokens alone cost 0.05.
    r = complete(client, max_tokens=50)
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    assert complete(client, max_tokens=2).status_code == 200


def test_concurrency_slot_is_released_after_errors_and_streams(backend, client, tenant):
    call_command("set_quota", "--tenant", "acme", "--concurrent", "1", stdout=StringIO())
    assert complete(client, model="nope").status_code == 404
    from tests.helpers import sse_events

    assert sse_events(complete(client, stream=True))[-1] == "data: [DONE]"
    assert complete(client).status_code == 200


def test_a_usage_record_that_fails_to_write_still_frees_the_slot(
    backend, client, tenant, monkeypatch
):
    import inference.accounting as accounting

    call_command("set_quota", "--tenant", "acme", "--concurrent", "1", stdout=StringIO())
    written = accounting.usage_record

    def lost_database(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(accounting, "usage_record", lost_database)
    client.raise_request_exception = False
    assert complete(client).status_code == 500
    monkeypatch.setattr(accounting, "usage_record", written)
    assert complete(client).status_code == 200


def test_set_quota_validates_its_input(tenant):
    with pytest.raises(CommandError, match="no tenant"):
        call_command("set_quota", "--tenant", "nobody", "--rpm", "1")
    with pytest.raises(CommandError, match="not a number"):
        call_command("set_quota", "--tenant", "acme", "--rpm", "many")
    with pytest.raises(CommandError, match="no key"):
        call_command("set_quota", "--tenant", "acme", "--key-prefix", "zzz", "--rpm", "1")
    call_command(
        "set_quota", "--tenant", "acme", "--rpm", "5", "--budget", "12.50", stdout=StringIO()
    )
    billing = TenantBilling.objects.get(tenant=tenant)
    assert billing.rpm == 5 and billing.monthly_budget == Decimal("12.50")
    call_command("set_quota", "--tenant", "acme", "--rpm", "none", stdout=StringIO())
    billing.refresh_from_db()
    assert billing.rpm is None and billing.monthly_budget == Decimal("12.50")


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (59, "59s"), (360, "6m0s"), (3723, "1h2m3s")]
)
def test_reset_text_uses_openai_format(seconds, text):
    assert reset_text(seconds) == text


def test_soft_budget_warns_once_by_email_and_audit(backend, client, tenant, mailoutbox):
    from accounts.models import AuditLog
    from billing.models import TenantBilling

    call_command(
        "set_price", "gemma-3-270m", "--prompt", "1000", "--completion", "1000", stdout=StringIO()
    )
    call_command("set_quota", "--tenant", "acme", "--budget", "0.05", stdout=StringIO())
    TenantBilling.objects.filter(tenant=tenant).update(billing_email="bills@acme.test")
    spent = Decimal(0)
    while spent < Decimal("0.04"):  # 80% of 0.05
        assert not mailoutbox
        r = complete(client, max_tokens=2)
        assert r.status_code == 200
        spent = sum(UsageRecord.objects.values_list("cost", flat=True), Decimal(0))
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["bills@acme.test"]
    complete(client, max_tokens=1)
    assert len(mailoutbox) == 1
    assert AuditLog.objects.filter(action="billing.soft_budget_reached", tenant=tenant).count() == 1
