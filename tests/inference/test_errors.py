from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_issue, api_key_revoke

pytestmark = pytest.mark.django_db

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings"]
)
def test_no_key_is_401_invalid_api_key(anon_client, path):
    r = anon_client.post(path, {}, format="json") if path != "/v1/models" else anon_client.get(path)
    assert r.status_code == 401
    assert set(r.json()["error"]) == ERROR_KEYS
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_bad_key_is_401_and_not_echoed(anon_client):
    secret = "sk-llm-0123456789ab_" + "x" * 40
    anon_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    r = anon_client.get("/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert secret not in r.content.decode()


def test_revoked_key_is_401(tenant, gemma):
    key, raw = api_key_issue(tenant=tenant, name="old")
    api_key_revoke(api_key=key)
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert c.get("/v1/models").status_code == 401


def test_wrong_method_is_405_json(client):
    r = client.get("/v1/completions")
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_malformed_json_is_400(client):
    r = client.post("/v1/completions", data="{not json", content_type="application/json")
    assert r.status_code == 400
    assert set(r.json()["error"]) == ERROR_KEYS


def test_body_over_limit_is_413(client, settings):
    settings.MAX_BODY_BYTES = 2048
    r = client.post(
        "/v1/completions", {"model": "gemma-3-270m", "prompt": "x" * 5000}, format="json"
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_unknown_v1_route_is_json_404(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert set(r.json()["error"]) == ERROR_KEYS


def test_request_id_is_echoed_or_generated_and_processing_ms_set(client):
    r = client.get("/v1/models", HTTP_X_REQUEST_ID="my-trace-123")
    assert r["x-request-id"] == "my-trace-123"
    assert int(r["openai-processing-ms"]) >= 0
    r2 = client.get("/v1/models")
    assert r2["x-request-id"].startswith("req_")
    r3 = client.get("/v1/models", HTTP_X_REQUEST_ID="bad id with spaces")
    assert r3["x-request-id"].startswith("req_")


def test_full_queue_is_503_overloaded_with_retry_after(client, settings):
    settings.LLMSITE_MAX_QUEUE = 0
    r = client.post("/v1/completions", {"model": "gemma-3-270m", "prompt": "x"}, format="json")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_overloaded"
    assert r["Retry-After"] == "2"


def test_engine_failure_is_500_without_internals(client, gemma, monkeypatch):
    from inference.registry import registry

    engine = registry.engine_for(gemma)

    def explode():
        raise RuntimeError("llama_decode returned -3 at /secret/path")

    monkeypatch.setattr(engine, "_step", explode)
    r = client.post("/v1/completions", {"model": "gemma-3-270m", "prompt": "x"}, format="json")
    assert r.status_code == 500
    err = r.json()["error"]
    assert set(err) == ERROR_KEYS and err["type"] == "server_error"
    assert "/secret/path" not in r.content.decode()


def test_usage_is_recorded_once_per_request_with_end_user(client, tenant):
    from billing.models import UsageRecord

    r = client.post(
        "/v1/completions",
        {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 2, "user": "u-42"},
        format="json",
        HTTP_X_REQUEST_ID="usage-1",
    )
    rec = UsageRecord.objects.get(request_id="usage-1")
    assert rec.tenant == tenant and rec.end_user == "u-42" and rec.status == "ok"
    assert rec.prompt_tokens == r.json()["usage"]["prompt_tokens"]
    assert rec.completion_tokens == r.json()["usage"]["completion_tokens"]
    client.post(
        "/v1/completions",
        {"model": "nope", "prompt": "Hi"},
        format="json",
        HTTP_X_REQUEST_ID="usage-2",
    )
    rec = UsageRecord.objects.get(request_id="usage-2")
    assert rec.status == "error" and rec.error_code == "model_not_found"
