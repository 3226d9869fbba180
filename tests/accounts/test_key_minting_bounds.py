"""A key minted (or rotated) by a `keys:manage` key is at most as broad as that key."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_issue
from billing.models import KeyLimits
from billing.services import limits_set
from inference.models import LLMModel
from tests.accounts.conftest import jwt_client, key_client

pytestmark = pytest.mark.django_db

KEYS = "/api/tenants/acme/keys/"


@pytest.fixture
def second(gemma):
    return LLMModel.objects.create(model_id="second", path=gemma.path, n_ctx=256)


def minter(tenant, **kwargs):
    kwargs.setdefault("scopes", ["keys:manage", "inference"])
    key, raw = api_key_issue(tenant=tenant, name="mgr", **kwargs)
    return key, key_client(raw)


def test_manage_key_cannot_grant_a_scope_it_lacks(tenant):
    _, client = minter(tenant, scopes=["keys:manage"])
    r = client.post(KEYS, {"name": "x", "scopes": ["inference", "usage:read"]}, format="json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    # Its default scopes (`inference`) are beyond it too.
    assert client.post(KEYS, {"name": "x"}, format="json").status_code == 403
    assert client.post(KEYS, {"scopes": ["keys:manage"]}, format="json").status_code == 201


def test_manage_key_cannot_grant_models_outside_its_list(tenant, gemma, second):
    _, client = minter(tenant, allowed_models=[gemma])
    r = client.post(KEYS, {"allowed_models": ["second"]}, format="json")
    assert r.status_code == 403
    # No list asked for: the new key gets the minter's list, not every model.
    r = client.post(KEYS, {"name": "inherits"}, format="json")
    assert r.status_code == 201
    assert r.json()["allowed_models"] == ["gemma-3-270m"] and r.json()["all_models"] is False
    models = key_client(r.json()["key"]).get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["gemma-3-270m"]


def test_manage_key_cannot_mint_a_key_that_outlives_it(tenant):
    ends = timezone.now() + timedelta(days=1)
    _, client = minter(tenant, expires_at=ends)
    later = (ends + timedelta(days=30)).isoformat()
    assert client.post(KEYS, {"expires_at": later}, format="json").status_code == 403
    r = client.post(KEYS, {"name": "no expiry asked"}, format="json")
    assert r.status_code == 201
    assert ApiKey.objects.get(prefix=r.json()["id"]).expires_at == ends


def test_minted_key_keeps_the_minters_limits(tenant):
    key, client = minter(tenant)
    limits_set(tenant=tenant, api_key=key, rpm=5, max_concurrent=1)
    r = client.post(KEYS, {"name": "child"}, format="json")
    assert r.status_code == 201
    row = KeyLimits.objects.get(api_key__prefix=r.json()["id"])
    assert (row.rpm, row.max_concurrent, row.tpm) == (5, 1, None)


def test_manage_key_cannot_rotate_a_broader_key_to_get_its_secret(tenant):
    broad, _ = api_key_issue(tenant=tenant, name="broad", scopes=["inference", "usage:read"])
    _, client = minter(tenant)
    r = client.post(f"{KEYS}{broad.prefix}/rotate/", {}, format="json")
    assert r.status_code == 403
    broad.refresh_from_db()
    assert broad.replaced_by_id is None


def test_rotation_keeps_the_rotated_keys_limits(tenant):
    key, client = minter(tenant)
    limits_set(tenant=tenant, api_key=key, tpm=1000)
    r = client.post(f"{KEYS}{key.prefix}/rotate/", {}, format="json")
    assert r.status_code == 201
    assert KeyLimits.objects.get(api_key__prefix=r.json()["id"]).tpm == 1000


def test_a_person_may_still_mint_any_key_of_the_tenant(people, tenant, second):
    owner = jwt_client(people["owner"].username)
    body = {"scopes": ["inference", "usage:read", "keys:manage"], "allowed_models": ["second"]}
    r = owner.post(KEYS, body, format="json")
    assert r.status_code == 201 and r.json()["allowed_models"] == ["second"]
