"""The staff admin for models and router aliases: edits, load/unload actions, audit."""

from __future__ import annotations

import re

import pytest

from accounts.models import AuditLog
from inference.model_admin import model_file_path
from inference.models import LLMModel, RouterAlias
from inference.registry import registry
from tests.helpers import admin_form_data, admin_messages, admin_url, audit_rows

pytestmark = pytest.mark.django_db


@pytest.fixture
def loaded_gemma(gemma):
    registry.engine_for(gemma).wait_ready(60)
    yield gemma
    # The registry is process-wide: leave the model loaded for the next test.
    registry.engine_for(LLMModel.objects.get(model_id=gemma.model_id)).wait_ready(60)


# -- models -----------------------------------------------------------------------------
def _model_row(admin_client, model_id: str) -> str:
    page = admin_client.get(admin_url(LLMModel, "changelist")).content.decode()
    row = re.search(rf"<tr>.*?{re.escape(model_id)}.*?</tr>", page, re.S)
    assert row, page
    return row.group(0)


def test_the_unload_and_load_actions_change_the_registry_and_are_audited(
    admin_client, loaded_gemma, staff
):
    model_id = loaded_gemma.model_id
    row = _model_row(admin_client, model_id)
    assert "loaded" in row and "MB, in use" in row

    r = admin_client.post(
        admin_url(LLMModel, "changelist"),
        {"action": "unload_selected", "_selected_action": [loaded_gemma.pk]},
        follow=True,
    )
    assert f"{model_id}: unloaded" in admin_messages(r)
    assert registry.get_loaded(model_id) is None
    [row] = audit_rows("model.unloaded")
    assert row.actor == staff and row.tenant is None and row.target_repr == model_id
    row = _model_row(admin_client, model_id)
    assert "unloaded" in row and "in use" not in row

    r = admin_client.post(
        admin_url(LLMModel, "changelist"),
        {"action": "load_selected", "_selected_action": [loaded_gemma.pk]},
        follow=True,
    )
    engine = registry.engine_for(loaded_gemma)
    assert engine.wait_ready(60)
    assert registry.get_loaded(model_id) is engine
    assert any(m.startswith(f"{model_id}: load") for m in admin_messages(r))
    [row] = audit_rows("model.loaded")
    assert row.actor == staff and row.tenant is None


def test_the_reload_action_replaces_the_engine(admin_client, loaded_gemma):
    before = registry.get_loaded(loaded_gemma.model_id)
    admin_client.post(
        admin_url(LLMModel, "changelist"),
        {"action": "reload_selected", "_selected_action": [loaded_gemma.pk]},
    )
    after = registry.engine_for(loaded_gemma)
    assert after.wait_ready(60) and after is not before
    assert len(audit_rows("model.unloaded")) == 1 and len(audit_rows("model.loaded")) == 1


def test_a_disabled_model_is_not_loaded(admin_client, gemma):
    ghost = LLMModel.objects.create(model_id="ghost", path="/nowhere/ghost.gguf", enabled=False)
    r = admin_client.post(
        admin_url(LLMModel, "changelist"),
        {"action": "load_selected", "_selected_action": [ghost.pk]},
        follow=True,
    )
    assert "ghost is disabled; enable it before loading it." in admin_messages(r)
    assert "ghost" not in registry.loaded_ids()
    assert not audit_rows("model.loaded")


def _model_form(**overrides) -> dict:
    data = {
        "model_id": "extra",
        "path": "/nonexistent/extra.gguf",
        "n_ctx": "2048",
        "n_threads": "",
        "n_batch": "512",
        "n_parallel": "8",
        "backend": "llama_cpp",
        "chat_format": "gemma",
        "embeddings": "on",
        "capabilities": '["chat", "completion", "json"]',
        "tags": "[]",
        "quality": "0.5",
        "cost_per_million": "0",
        "weight": "1",
        "enabled": "on",
        "owned_by": "llmsite",
    }
    data.update(overrides)
    return data


def test_a_remote_model_needs_a_base_url_and_its_key_is_never_shown(admin_client, staff):
    form = _model_form(model_id="far", path="", backend="openai")
    r = admin_client.post(admin_url(LLMModel, "add"), form)
    assert "A remote backend needs its base URL." in r.content.decode()
    form.update(base_url="http://10.0.0.7:8000/v1", remote_api_key="sk-upstream-secret")
    r = admin_client.post(admin_url(LLMModel, "add"), form, follow=True)
    far = LLMModel.objects.get(model_id="far")
    assert far.is_remote and far.remote_api_key == "sk-upstream-secret"
    page = admin_client.get(admin_url(LLMModel, "change", far.pk)).content.decode()
    assert "sk-upstream-secret" not in page
    # Saving without typing the key keeps it.
    data = admin_form_data(admin_client.get(admin_url(LLMModel, "change", far.pk)))
    data["quality"] = "0.9"
    r = admin_client.post(admin_url(LLMModel, "change", far.pk), data)
    assert r.status_code == 302, r.context["adminform"].form.errors
    far.refresh_from_db()
    assert far.quality == 0.9 and far.remote_api_key == "sk-upstream-secret"
    assert all("sk-upstream" not in str(row.data) for row in AuditLog.objects.all())


def test_router_aliases_are_edited_in_the_admin_and_audited(admin_client, loaded_gemma, staff):
    data = {
        "name": "fast",
        "strategy": "speed-priority",
        "description": "",
        "enabled": "on",
        "candidates-TOTAL_FORMS": "1",
        "candidates-INITIAL_FORMS": "0",
        "candidates-MIN_NUM_FORMS": "0",
        "candidates-MAX_NUM_FORMS": "1000",
        "candidates-0-position": "0",
        "candidates-0-model": str(loaded_gemma.pk),
    }
    r = admin_client.post(admin_url(RouterAlias, "add"), data, follow=True)
    assert r.status_code == 200
    alias = RouterAlias.objects.get(name="fast")
    assert [c.model.model_id for c in alias.candidates.all()] == ["gemma-3-270m"]
    [row] = audit_rows("alias.added")
    assert row.actor == staff and row.data["candidates"] == ["gemma-3-270m"]
    assert "gemma-3-270m" in admin_client.get(admin_url(RouterAlias, "changelist")).content.decode()


def test_a_model_whose_file_does_not_exist_is_refused_with_the_path_named(admin_client, tmp_path):
    r = admin_client.post(admin_url(LLMModel, "add"), _model_form())
    assert r.status_code == 200
    assert "GGUF file not found: /nonexistent/extra.gguf" in r.content.decode()

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_bytes(b"hello")
    r = admin_client.post(admin_url(LLMModel, "add"), _model_form(path=str(not_gguf)))
    assert f"Not a GGUF file (bad magic b&#x27;hell&#x27;): {not_gguf}" in r.content.decode()

    r = admin_client.post(admin_url(LLMModel, "add"), _model_form(path="bundled:no-such-package"))
    assert "bundled model package &#x27;no_such_package&#x27; is not installed" in (
        r.content.decode()
    )
    assert not LLMModel.objects.filter(model_id="extra").exists()
    assert not audit_rows("model.added")


def test_adding_and_disabling_a_model_are_audited(admin_client, loaded_gemma, staff):
    path = model_file_path(model=loaded_gemma)
    r = admin_client.post(admin_url(LLMModel, "add"), _model_form(path=str(path)), follow=True)
    assert r.status_code == 200
    extra = LLMModel.objects.get(model_id="extra")
    [row] = audit_rows("model.added")
    assert row.actor == staff and row.target_repr == "extra" and row.data["path"] == str(path)

    data = admin_form_data(admin_client.get(admin_url(LLMModel, "change", extra.pk)))
    del data["enabled"]
    admin_client.post(admin_url(LLMModel, "change", extra.pk), data)
    extra.refresh_from_db()
    assert extra.enabled is False
    [row] = audit_rows("model.disabled")
    assert row.actor == staff
    assert not audit_rows("model.changed")
