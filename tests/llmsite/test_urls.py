"""The site's own routes: liveness, the OpenAPI schema and Swagger UI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_health_is_ok_without_auth():
    r = Client().get("/health")
    assert r.status_code == 200 and r.json()["status"] == "healthy"


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
