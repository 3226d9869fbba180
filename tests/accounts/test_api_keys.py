from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import ApiKey, Tenant
from accounts.services import api_key_authenticate, api_key_issue, api_key_revoke

pytestmark = pytest.mark.django_db


def test_key_is_stored_as_prefix_and_hash_never_raw(tenant):
    key, raw = api_key_issue(tenant=tenant, name="ci")
    assert raw.startswith("sk-llm-")
    row = ApiKey.objects.get(pk=key.pk)
    assert row.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {row.prefix, row.hashed_key, row.name}
    assert raw.startswith(f"sk-llm-{row.prefix}_")


def test_authenticate_accepts_the_key_and_records_last_use(tenant):
    key, raw = api_key_issue(tenant=tenant)
    assert key.last_used_at is None
    found = api_key_authenticate(raw=raw)
    assert found.pk == key.pk and found.tenant == tenant
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_authenticate_rejects_tampered_revoked_and_foreign_shapes(tenant):
    key, raw = api_key_issue(tenant=tenant)
    assert api_key_authenticate(raw=raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert api_key_authenticate(raw="not-a-key") is None
    assert api_key_authenticate(raw="sk-llm-short_x") is None
    api_key_revoke(api_key=key)
    assert api_key_authenticate(raw=raw) is None


def test_inactive_tenant_keys_stop_working(tenant):
    _, raw = api_key_issue(tenant=tenant)
    Tenant.objects.filter(pk=tenant.pk).update(is_active=False)
    assert api_key_authenticate(raw=raw) is None


def test_create_api_key_command_prints_the_raw_key_last(db):
    out, err = StringIO(), StringIO()
    call_command("create_api_key", "--tenant", "newco", "--name", "cli", stdout=out, stderr=err)
    raw = out.getvalue().strip().splitlines()[-1]
    assert Tenant.objects.filter(slug="newco").exists()
    assert api_key_authenticate(raw=raw).name == "cli"
    assert raw not in err.getvalue()


def test_create_api_key_command_rejects_a_bad_slug(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="slug"):
        call_command("create_api_key", "--tenant", "Bad Slug!")
