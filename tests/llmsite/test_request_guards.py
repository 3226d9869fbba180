"""Bodies and URLs that used to reach a 500 are 400s, rendered as OpenAI errors."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_issue
from billing.models import UsageRecord
from llmsite.parsers import MAX_DEPTH

pytestmark = pytest.mark.django_db


def raw_post(client, path, body: str):
    return client.generic("POST", path, body.encode(), content_type="application/json")


def assert_400(r, code=None):
    assert r.status_code == 400, r.content
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code:
        assert err["code"] == code


def test_token_endpoint_with_a_json_list_is_400():
    assert_400(raw_post(APIClient(), "/api/auth/token/", '["alice", "secret"]'))


def test_deeply_nested_json_outside_v1_is_400():
    assert_400(raw_post(APIClient(), "/api/auth/token/", "[" * 100_000), "invalid_json")


def test_deeply_nested_json_on_an_authenticated_endpoint_is_400(tenant):
    _, raw = api_key_issue(tenant=tenant, scopes=["keys:manage", "inference"])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_400(raw_post(c, "/api/tenants/acme/keys/", "[" * 100_000), "invalid_json")
    deep = json.dumps({"name": "x", "scopes": ["inference"], "extra": _nested(MAX_DEPTH)})
    assert_400(raw_post(c, "/api/tenants/acme/keys/", deep), "invalid_json")
    ok = json.dumps({"name": "x", "scopes": ["inference"], "extra": _nested(MAX_DEPTH - 2)})
    assert raw_post(c, "/api/tenants/acme/keys/", ok).status_code == 201


def _nested(levels: int):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_statement_month_out_of_range_is_400(tenant):
    _, raw = api_key_issue(tenant=tenant, scopes=["usage:read"])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    r = c.get("/api/tenants/acme/statements/2026-13/")
    assert_400(r)
    assert r.json()["error"]["param"] == "month"


@pytest.mark.parametrize("field", ["model", "user"])
def test_nul_in_a_string_field_is_400_and_the_usage_record_is_kept(client, field):
    body = {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 1, field: "x\x00y"}
    r = client.post("/v1/completions", body, format="json")
    assert_400(r)
    [record] = UsageRecord.objects.all()
    assert "\x00" not in record.model_id + record.end_user


def test_nul_in_a_json_string_or_key_is_400_outside_v1(tenant):
    _, raw = api_key_issue(tenant=tenant, scopes=["keys:manage", "inference"])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    r = raw_post(c, "/api/tenants/acme/keys/", '{"name": "a\\u0000b"}')
    assert_400(r, "invalid_json")
    assert "NUL" in r.json()["error"]["message"]
    assert_400(raw_post(c, "/api/tenants/acme/keys/", '{"a\\u0000": 1}'), "invalid_json")


def test_nul_in_the_url_is_400(client):
    assert_400(client.get("/api/tenants/acme%00/keys/"), "invalid_url")
    assert_400(client.get("/api/tenants/acme/usage/?group_by=%00"), "invalid_url")
