from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import Client

from inference.registry import registry

pytestmark = pytest.mark.django_db


def test_health_is_ok_without_auth():
    r = Client().get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_ready_once_the_default_model_is_loaded(qwen):
    registry.unload(qwen.model_id)
    r = Client().get("/ready")
    assert r.status_code == 503
    assert qwen.model_id in r.json()["error"]["message"]
    registry.engine_for(qwen).wait_ready(60)
    r = Client().get("/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_schema_and_swagger_are_served():
    schema = Client().get("/api/schema/")
    assert schema.status_code == 200
    assert b"/v1/chat/completions" in schema.content
    docs = Client().get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_spectacular_validates_without_warnings():
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--file",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "http://nope"),
        ("LLMSITE_DEBUG", "maybe"),
        ("LLMSITE_MAX_BODY_BYTES", "lots"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(name, value):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), name: value},
    )
    assert result.returncode != 0
    assert name in result.stderr


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
