from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import AuditLog, Role
from accounts.services import member_add
from inference.models import BACKEND_OPENAI, LLMModel
from inference.registry import registry
from inference.telemetry import live

pytestmark = pytest.mark.django_db

MODEL = "gemma-3-270m"


def bearer(user) -> APIClient:
    # Minted directly: signing in through /api/auth/token/ is rate-limited per IP.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


@pytest.fixture
def staff():
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username="ops", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="manage_engine"))
    return user


@pytest.fixture
def ops(staff, gemma) -> APIClient:
    return bearer(staff)


@pytest.fixture
def loaded(gemma):
    engine = registry.engine_for(gemma)
    engine.wait_ready(60)
    return engine


@pytest.fixture(autouse=True)
def _clean_live():
    yield
    live.reset()


def assert_error(response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.content
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code


# -- who may call -----------------------------------------------------------------
ENDPOINTS = [
    ("get", "/api/admin/stats"),
    ("post", f"/api/admin/models/{MODEL}/load"),
    ("post", f"/api/admin/models/{MODEL}/unload"),
    ("post", f"/api/admin/models/{MODEL}/reload"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_anonymous_gets_401(method, url, gemma):
    r = getattr(APIClient(), method)(url)
    assert_error(r, 401)
    assert r["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_api_keys_are_refused_even_a_staff_tenants(method, url, client, loaded):
    r = getattr(client, method)(url)
    assert_error(r, 401, "invalid_api_key")
    assert "API key" in r.json()["error"]["message"]
    assert registry.get_loaded(MODEL) is loaded  # nothing happened


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_a_non_staff_user_gets_403(method, url, tenant, loaded):
    # Even the owner of a tenant: operators run the platform, not a tenant.
    owner = get_user_model().objects.create_user(username="owner", password="x")
    member_add(tenant=tenant, user=owner, role=Role.OWNER)
    r = getattr(bearer(owner), method)(url)
    assert_error(r, 403, "permission_denied")
    assert registry.get_loaded(MODEL) is loaded


def test_a_bad_or_inactive_users_token_is_401(staff, gemma):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Bearer not.a.jwt")
    assert_error(c.get("/api/admin/stats"), 401)
    c = bearer(staff)
    staff.is_active = False
    staff.save()
    assert_error(c.get("/api/admin/stats"), 401)


# -- stats ------------------------------------------------------------------------
def test_staff_sees_stats_for_every_enabled_model(ops, loaded, client):
    LLMModel.objects.create(model_id="spare", path="/nowhere/spare.gguf")
    LLMModel.objects.create(model_id="off", path="/nowhere/off.gguf", enabled=False)
    before = ops.get("/api/admin/stats").json()
    r = client.post(
        "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1}, format="json"
    )
    assert r.status_code == 200
    # The router's figures after that request, replaced by known ones to read back.
    assert live.get(MODEL).requests >= 1 and live.get(MODEL).ttft_ms > 0
    live.set(MODEL, ttft_ms=42.0, tokens_per_s=99.0, in_flight=1, requests=5, errors=1)

    stats = ops.get("/api/admin/stats")
    assert stats.status_code == 200
    body = stats.json()
    assert body["object"] == "llmsite.stats"
    assert body["uptime_s"] >= 0 and body["started_at"] > 0
    assert body["requests"] == before["requests"] + 1
    assert body["errors"] == before["errors"]
    assert body["http_requests"] > before["http_requests"]
    assert body["models_loaded"] >= 1
    models = {m["id"]: m for m in body["models"]}
    assert set(models) >= {MODEL, "spare"} and "off" not in models
    gemma = models[MODEL]
    assert gemma["state"] == "loaded" and gemma["loaded"] is True
    assert gemma["backend"] == "llama_cpp"
    assert gemma["queue_depth"] == 0 and gemma["engine_in_flight"] == 0
    assert gemma["in_flight"] == 1
    assert gemma["ttft_ms"] == 42.0 and gemma["tokens_per_s"] == 99.0
    assert gemma["requests"] == 5 and gemma["errors"] == 1
    assert gemma["memory_bytes"] == loaded.spec.path.stat().st_size
    spare = models["spare"]
    assert spare["state"] == "unloaded" and spare["loaded"] is False
    assert spare["memory_bytes"] is None and spare["ttft_ms"] is None


def test_stats_includes_an_engines_own_stats(ops, loaded, monkeypatch):
    monkeypatch.setattr(loaded, "stats", lambda: {"prefix_hits": 4, "label": "x"}, raising=False)
    models = {m["id"]: m for m in ops.get("/api/admin/stats").json()["models"]}
    assert models[MODEL]["engine_stats"] == {"prefix_hits": 4.0}


# -- load, unload, reload -----------------------------------------------------------
def test_unload_then_load_the_real_model(ops, staff, loaded):
    r = ops.post(f"/api/admin/models/{MODEL}/unload")
    assert r.status_code == 200, r.content
    assert r.json()["state"] == "unloaded" and r.json()["loaded"] is False
    assert registry.get(MODEL) is None

    r = ops.post(f"/api/admin/models/{MODEL}/load?wait=60")
    assert r.status_code == 200, r.content
    assert r.json()["state"] == "loaded" and r.json()["memory_bytes"] > 0
    engine = registry.get_loaded(MODEL)
    assert engine is not None and engine is not loaded

    rows = AuditLog.objects.filter(target_repr=MODEL, actor=staff).order_by("id")
    assert list(rows.values_list("action", flat=True)) == ["model.unloaded", "model.loaded"]
    assert rows.last().data["state"] == "loaded" and rows.last().tenant is None


def test_load_answers_202_while_loading(ops, loaded):
    registry.unload(MODEL)
    r = ops.post(f"/api/admin/models/{MODEL}/load?wait=0")
    assert r.status_code == 202, r.content
    assert r.json()["state"] == "loading" and r.json()["loaded"] is False
    engine = registry.get(MODEL)
    assert engine is not None and engine.wait_ready(60)
    # Already loaded: answered at once.
    r = ops.post(f"/api/admin/models/{MODEL}/load?wait=0")
    assert r.status_code == 200 and r.json()["state"] == "loaded"


def test_reload_starts_a_new_engine(ops, loaded):
    r = ops.post(f"/api/admin/models/{MODEL}/reload?wait=60")
    assert r.status_code == 200, r.content
    assert r.json()["state"] == "loaded"
    new = registry.get_loaded(MODEL)
    assert new is not None and new is not loaded


def test_served_requests_still_work_after_a_reload(ops, loaded, client):
    assert ops.post(f"/api/admin/models/{MODEL}/reload?wait=60").status_code == 200
    r = client.post(
        "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1}, format="json"
    )
    assert r.status_code == 200


@pytest.mark.parametrize("action", ["load", "unload", "reload"])
def test_unknown_model_is_404(ops, action):
    r = ops.post(f"/api/admin/models/no-such-model/{action}")
    assert_error(r, 404, "model_not_found")


def test_model_ids_with_slashes_are_routed(ops):
    LLMModel.objects.create(model_id="org/name", path="/nowhere/x.gguf", enabled=False)
    assert ops.post("/api/admin/models/org/name/unload").json()["id"] == "org/name"


def test_a_disabled_model_is_not_loaded(ops):
    LLMModel.objects.create(model_id="off", path="/nowhere/off.gguf", enabled=False)
    assert_error(ops.post("/api/admin/models/off/load"), 400, "model_disabled")
    assert registry.get("off") is None


def test_a_model_that_fails_to_load_is_503_with_the_reason(ops, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    LLMModel.objects.create(model_id="broken", path=str(bad))
    try:
        r = ops.post("/api/admin/models/broken/load?wait=30")
        assert_error(r, 503, "model_load_failed")
        assert "GGUF" in r.json()["error"]["message"]
        stats = {m["id"]: m for m in ops.get("/api/admin/stats").json()["models"]}
        assert stats["broken"]["state"] == "failed" and stats["broken"]["error"]
    finally:
        registry.unload("broken")


@pytest.mark.parametrize("wait", ["-1", "abc", "1000"])
def test_an_invalid_wait_is_400(ops, wait):
    r = ops.post(f"/api/admin/models/{MODEL}/load?wait={wait}")
    assert_error(r, 400, "invalid_value")
    assert r.json()["error"]["param"] == "wait"


def test_a_remote_model_is_listed_but_not_loaded_here(ops):
    LLMModel.objects.create(
        model_id="far", path="", backend=BACKEND_OPENAI, base_url="http://10.0.0.7:8000/v1"
    )
    live.set("far", ttft_ms=80.0, in_flight=2)
    models = {m["id"]: m for m in ops.get("/api/admin/stats").json()["models"]}
    far = models["far"]
    assert far["backend"] == "openai" and far["state"] == "remote" and far["loaded"] is False
    assert far["memory_bytes"] is None and far["queue_depth"] == 0
    assert far["in_flight"] == 2 and far["ttft_ms"] == 80.0
    assert_error(ops.post("/api/admin/models/far/load"), 400, "model_remote")


def test_ready_once_the_default_model_is_loaded(qwen):
    registry.unload(qwen.model_id)
    r = Client().get("/ready")
    assert r.status_code == 503
    assert qwen.model_id in r.json()["error"]["message"]
    registry.engine_for(qwen).wait_ready(60)
    r = Client().get("/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"
