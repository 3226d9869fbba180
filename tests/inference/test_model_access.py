from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.models import AuditLog
from accounts.services import api_key_issue, tenant_models_set
from inference.models import LLMModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def second(gemma):
    return LLMModel.objects.create(model_id="second", path=gemma.path, n_ctx=256)


def client_for(raw):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return c


def ids(client):
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_empty_tenant_list_means_all_enabled_models(client, second, qwen):
    assert ids(client) == {"gemma-3-270m", "second", "qwen2.5-coder-0.5b-instruct"}


def test_tenant_allow_list_hides_other_models_as_not_found(client, tenant, gemma, second):
    tenant_models_set(tenant=tenant, models=[second])
    assert ids(client) == {"second"}
    r = client.post("/v1/completions", {"model": "gemma-3-270m", "prompt": "x"}, format="json")
    missing = client.post("/v1/completions", {"model": "nope", "prompt": "x"}, format="json")
    assert r.status_code == missing.status_code == 404
    assert r.json()["error"]["message"].replace("gemma-3-270m", "M") == missing.json()["error"][
        "message"
    ].replace("nope", "M")
    assert client.get("/v1/models/gemma-3-270m").status_code == 404
    assert AuditLog.objects.filter(action="tenant.models_changed", tenant=tenant).count() == 1


def test_key_allow_list_narrows_the_tenant_list(tenant, gemma, second):
    _, raw = api_key_issue(tenant=tenant, allowed_models=[gemma])
    c = client_for(raw)
    assert ids(c) == {"gemma-3-270m"}
    r = c.post("/v1/embeddings", {"model": "second", "input": "x"}, format="json")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_key_list_cannot_widen_the_tenant_list(tenant, gemma, second):
    tenant_models_set(tenant=tenant, models=[second])
    _, raw = api_key_issue(tenant=tenant, allowed_models=[gemma])
    assert ids(client_for(raw)) == set()


def test_key_without_inference_scope_is_403_on_v1(tenant, gemma):
    _, raw = api_key_issue(tenant=tenant, scopes=["usage:read"])
    r = client_for(raw).get("/v1/models")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
