"""LLMSITE_ENV=production: Django's deploy check passes, and development defaults
stop start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "p" * 20 + "roduction-secret-key-with-enough-characters-0123456789"


def manage(tmp_path, *args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLMSITE_") and k != "DEBUG"}
    base.update(LLMSITE_DATA_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "LLMSITE_ENV": "production",
    "LLMSITE_SECRET_KEY": SECRET,
    "LLMSITE_ALLOWED_HOSTS": "llm.example.com",
    "LLMSITE_FIELD_KEY": "0tqf8uXmTRxqS6E1dD0ZzKcmOGgLP2MMxjyG7Yf4yw4=",
}


def test_check_deploy_passes_with_production_settings(tmp_path):
    r = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues" in r.stdout


def test_check_deploy_fails_with_development_settings(tmp_path):
    r = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert r.returncode != 0
    assert "SESSION_COOKIE_SECURE" in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"LLMSITE_SECRET_KEY": ""}, "LLMSITE_SECRET_KEY"),
        ({"LLMSITE_SECRET_KEY": "short-but-32-characters-long-xxxxxx"}, "LLMSITE_SECRET_KEY"),
        ({"LLMSITE_DEBUG": "1"}, "LLMSITE_DEBUG"),
        ({"LLMSITE_ALLOWED_HOSTS": ""}, "LLMSITE_ALLOWED_HOSTS"),
        ({"LLMSITE_ALLOWED_HOSTS": "*"}, "LLMSITE_ALLOWED_HOSTS"),
        ({"LLMSITE_ENV": "prod"}, "LLMSITE_ENV"),
        ({"LLMSITE_FIELD_KEY": ""}, "LLMSITE_FIELD_KEY"),
        ({"LLMSITE_FIELD_KEY": "not-a-fernet-key"}, "LLMSITE_FIELD_KEY"),
    ],
)
def test_production_refuses_development_defaults(tmp_path, change, named):
    r = manage(tmp_path, "check", **{**PRODUCTION, **change})
    assert r.returncode != 0
    assert named in r.stderr
    assert not (tmp_path / "secret_key").exists()  # no key generated behind its back
