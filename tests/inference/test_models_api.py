from __future__ import annotations

import pytest

from inference.models import LLMModel

pytestmark = pytest.mark.django_db


def test_list_models_shows_enabled_models(client):
    LLMModel.objects.create(model_id="off", path="/nope.gguf", enabled=False)
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert "gemma-3-270m" in ids and "off" not in ids
    model = next(m for m in body["data"] if m["id"] == "gemma-3-270m")
    assert set(model) == {"id", "object", "created", "owned_by"}
    assert model["object"] == "model"


def test_retrieve_model(client):
    r = client.get("/v1/models/gemma-3-270m")
    assert r.status_code == 200 and r.json()["id"] == "gemma-3-270m"


def test_unknown_model_is_404_model_not_found(client):
    r = client.get("/v1/models/nope")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `nope` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_completion_for_unknown_model_is_404(client):
    r = client.post("/v1/completions", {"model": "nope", "prompt": "x"}, format="json")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_missing_gguf_is_503_and_other_models_keep_serving(client, tmp_path):
    LLMModel.objects.create(model_id="broken", path=str(tmp_path / "missing.gguf"))
    r = client.post("/v1/completions", {"model": "broken", "prompt": "x"}, format="json")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_unavailable"
    assert "Retry-After" in r
    ok = client.post(
        "/v1/completions", {"model": "gemma-3-270m", "prompt": "x", "max_tokens": 1}, format="json"
    )
    assert ok.status_code == 200


def test_corrupt_gguf_is_503(client, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    LLMModel.objects.create(model_id="corrupt", path=str(bad))
    r = client.post("/v1/completions", {"model": "corrupt", "prompt": "x"}, format="json")
    assert r.status_code == 503
