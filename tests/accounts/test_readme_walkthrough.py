"""README's "Tenants and keys" section, step by step, from an empty database."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

PASSWORD = "a-Long-passphrase-42"


def test_owner_signs_in_issues_uses_rotates_and_audits(gemma):
    call_command(
        "create_user",
        "alice",
        "--tenant",
        "acme",
        "--role",
        "owner",
        stdin=StringIO(PASSWORD + "\n"),
        stdout=StringIO(),
    )
    anon = APIClient()
    tokens = anon.post(
        "/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json"
    ).json()
    alice = APIClient()
    alice.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")

    created = alice.post(
        "/api/tenants/acme/keys/", {"name": "ci", "scopes": ["inference"]}, format="json"
    )
    assert created.status_code == 201
    key_id, raw = created.json()["id"], created.json()["key"]

    holder = APIClient()
    holder.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert "gemma-3-270m" in {m["id"] for m in holder.get("/v1/models").json()["data"]}

    rotated = alice.post(
        f"/api/tenants/acme/keys/{key_id}/rotate/", {"grace_seconds": 3600}, format="json"
    )
    assert rotated.status_code == 201
    assert holder.get("/v1/models").status_code == 200  # inside the grace period

    audit = alice.get("/api/tenants/acme/audit/").json()["results"]
    actions = [row["action"] for row in audit]
    assert {"member.added", "api_key.created", "api_key.rotated"} <= set(actions)
