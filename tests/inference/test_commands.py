from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from inference.models import LLMModel
from inference.registry import resolve_path

pytestmark = pytest.mark.django_db


def test_add_model_registers_a_gguf(tmp_path, gemma):
    source = resolve_path(gemma.path)
    link = tmp_path / "copy.gguf"
    link.symlink_to(source)
    out = StringIO()
    call_command(
        "add_model",
        "gemma-small-ctx",
        str(link),
        "--n-ctx",
        "512",
        "--chat-format",
        "gemma",
        "--no-embeddings",
        stdout=out,
    )
    model = LLMModel.objects.get(model_id="gemma-small-ctx")
    assert model.n_ctx == 512 and model.embeddings is False and model.enabled
    assert "Registered" in out.getvalue()


def test_add_model_names_a_missing_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(CommandError, match=str(missing)):
        call_command("add_model", "m", str(missing))


def test_add_model_rejects_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(CommandError, match="Not a GGUF"):
        call_command("add_model", "m", str(bad))


def test_added_model_serves_completions(client, gemma, tmp_path):
    link = tmp_path / "second.gguf"
    link.symlink_to(resolve_path(gemma.path))
    call_command("add_model", "gemma-second", str(link), "--n-ctx", "256", stdout=StringIO())
    r = client.post(
        "/v1/completions", {"model": "gemma-second", "prompt": "Hi", "max_tokens": 2}, format="json"
    )
    assert r.status_code == 200 and r.json()["model"] == "gemma-second"
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert {"gemma-3-270m", "gemma-second"} <= set(ids)


def test_add_model_is_audited(tmp_path, gemma):
    from accounts.models import AuditLog

    link = tmp_path / "audited.gguf"
    link.symlink_to(resolve_path(gemma.path))
    call_command("add_model", "audited", str(link), stdout=StringIO())
    call_command("add_model", "audited", str(link), "--disabled", stdout=StringIO())
    actions = list(
        AuditLog.objects.filter(target_id=str(LLMModel.objects.get(model_id="audited").pk))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["model.added", "model.disabled"]
