"""The staff admin for tenants, members, API keys and the audit trail."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, AuditLog, Membership
from accounts.services import (
    api_key_authenticate,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    hash_key,
    member_add,
)
from inference.models import LLMModel
from tests.helpers import admin_form_data, admin_messages, admin_url, audit_rows

pytestmark = pytest.mark.django_db

RAW_KEY = re.compile(r"sk-llm-[0-9a-f]{12}_[A-Za-z0-9_-]+")


# -- access ---------------------------------------------------------------------------
def test_every_admin_page_renders_for_a_superuser(admin_client, tenant, api_key, gemma):
    key = ApiKey.objects.get(tenant=tenant)
    row = AuditLog.objects.first()
    pages = [
        admin_url(ApiKey, "changelist"),
        admin_url(ApiKey, "add"),
        admin_url(ApiKey, "change", key.pk),
        admin_url(tenant, "changelist"),
        admin_url(tenant, "add"),
        admin_url(tenant, "change", tenant.pk),
        admin_url(LLMModel, "changelist"),
        admin_url(LLMModel, "add"),
        admin_url(LLMModel, "change", gemma.pk),
        admin_url(AuditLog, "changelist"),
        admin_url(AuditLog, "change", row.pk),
        reverse("admin:billing_usagerecord_changelist"),
        reverse("admin:index"),
    ]
    for url in pages:
        assert admin_client.get(url).status_code == 200, url


def test_non_staff_users_are_sent_to_the_login_page(tenant, gemma):
    user = get_user_model().objects.create_user("mallory", password="pw")
    member_add(tenant=tenant, user=user, role="owner")
    signed_in = Client()
    signed_in.force_login(user)
    for c in (Client(), signed_in):
        for url in (
            reverse("admin:index"),
            admin_url(ApiKey, "changelist"),
            admin_url(ApiKey, "add"),
            admin_url(tenant, "change", tenant.pk),
            admin_url(LLMModel, "changelist"),
            admin_url(AuditLog, "changelist"),
        ):
            r = c.get(url)
            assert r.status_code == 302, url
            assert r["Location"].startswith(reverse("admin:login")), url


# -- API keys -------------------------------------------------------------------------
def test_a_key_created_in_the_admin_is_shown_once_and_only_its_hash_is_stored(
    admin_client, tenant, gemma, staff
):
    r = admin_client.post(
        admin_url(ApiKey, "add"),
        {
            "tenant": tenant.pk,
            "name": "ci",
            "scopes": ["inference", "usage:read"],
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": [gemma.pk],
        },
        follow=True,
    )
    assert r.status_code == 200
    shown = [m for m in admin_messages(r) if RAW_KEY.search(m)]
    assert len(shown) == 1 and "not be shown again" in shown[0]
    raw = RAW_KEY.search(shown[0]).group(0)
    assert raw in r.content.decode()

    key = ApiKey.objects.get(name="ci")
    assert key.hashed_key == hash_key(raw)
    assert raw not in repr(list(ApiKey.objects.values()))
    assert key.scopes == ["inference", "usage:read"]
    assert list(key.allowed_models.all()) == [gemma]
    assert key.created_by == staff
    assert api_key_authenticate(raw=raw) == key

    [row] = audit_rows("api_key.created")
    assert row.actor == staff and row.ip == "127.0.0.1" and row.request_id.startswith("req_")

    for url in (admin_url(ApiKey, "change", key.pk), admin_url(ApiKey, "changelist")):
        page = admin_client.get(url).content.decode()
        assert key.prefix in page
        assert raw not in page
        assert key.hashed_key not in page


def test_the_add_form_refuses_an_expiry_in_the_past(admin_client, tenant):
    past = timezone.localtime() - timedelta(days=1)
    r = admin_client.post(
        admin_url(ApiKey, "add"),
        {
            "tenant": tenant.pk,
            "name": "late",
            "scopes": ["inference"],
            "expires_at_0": past.strftime("%Y-%m-%d"),
            "expires_at_1": past.strftime("%H:%M:%S"),
        },
    )
    assert r.status_code == 200
    assert "The expiry must be in the future." in r.content.decode()
    assert not ApiKey.objects.filter(name="late").exists()


def test_only_the_name_of_an_existing_key_can_be_changed(admin_client, tenant):
    key, _ = api_key_issue(tenant=tenant, name="old", scopes=["inference"])
    r = admin_client.post(
        admin_url(ApiKey, "change", key.pk),
        {"name": "new", "scopes": '["keys:manage"]', "hashed_key": "0" * 64, "prefix": "x"},
    )
    assert r.status_code == 302
    before_hash, before_prefix = key.hashed_key, key.prefix
    key.refresh_from_db()
    assert key.name == "new"
    assert key.scopes == ["inference"]
    assert (key.hashed_key, key.prefix) == (before_hash, before_prefix)


def test_keys_cannot_be_deleted_in_the_admin(admin_client, tenant):
    key, _ = api_key_issue(tenant=tenant, name="keep")
    assert admin_client.get(admin_url(ApiKey, "delete", key.pk)).status_code == 403
    assert (
        "delete_selected" not in admin_client.get(admin_url(ApiKey, "changelist")).content.decode()
    )


def test_the_revoke_action_revokes_and_audits(admin_client, tenant, staff):
    key, raw = api_key_issue(tenant=tenant, name="doomed")
    r = admin_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
        follow=True,
    )
    assert "Revoked 1 key(s)." in admin_messages(r)
    key.refresh_from_db()
    assert key.state == "revoked"
    assert api_key_authenticate(raw=raw) is None
    [row] = audit_rows("api_key.revoked")
    assert row.actor == staff and row.target_id == str(key.pk)


def test_the_rotate_action_shows_the_new_key_once_and_keeps_the_old_one_for_a_grace_period(
    admin_client, tenant, staff
):
    key, old_raw = api_key_issue(tenant=tenant, name="rolling")
    r = admin_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "rotate_selected", "_selected_action": [key.pk]},
        follow=True,
    )
    [message] = [m for m in admin_messages(r) if RAW_KEY.search(m)]
    new_raw = RAW_KEY.search(message).group(0)
    assert new_raw != old_raw and new_raw in r.content.decode()
    key.refresh_from_db()
    assert key.state == "rotating"
    assert api_key_authenticate(raw=old_raw) == key
    assert api_key_authenticate(raw=new_raw) == key.replaced_by
    assert timedelta(hours=23) < key.expires_at - timezone.now() <= timedelta(hours=24)
    [row] = audit_rows("api_key.rotated")
    assert row.actor == staff and row.data["new_key"] == key.replaced_by.prefix

    # A second rotation of the same key is refused with a message, not a crash.
    r = admin_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "rotate_selected", "_selected_action": [key.pk]},
        follow=True,
    )
    assert r.status_code == 200
    assert any("can be rotated" in m for m in admin_messages(r))
    assert len(audit_rows("api_key.rotated")) == 1


def _keys_in_each_state(tenant) -> dict[str, ApiKey]:
    active, _ = api_key_issue(tenant=tenant, name="active")
    rotated, _ = api_key_issue(tenant=tenant, name="rotated")
    api_key_rotate(api_key=rotated)
    expired, _ = api_key_issue(tenant=tenant, name="expired")
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    revoked, _ = api_key_issue(tenant=tenant, name="revoked")
    api_key_revoke(api_key=revoked)
    rotated.refresh_from_db()
    return {
        "active": active,
        "rotating": rotated,
        "expired": expired,
        "revoked": revoked,
        "replacement": rotated.replaced_by,
    }


def test_the_state_filter_lists_keys_in_that_state_only(admin_client, tenant):
    keys = _keys_in_each_state(tenant)
    expected = {
        "active": {keys["active"], keys["replacement"]},
        "rotating": {keys["rotating"]},
        "expired": {keys["expired"]},
        "revoked": {keys["revoked"]},
    }
    for state, wanted in expected.items():
        r = admin_client.get(admin_url(ApiKey, "changelist"), {"state": state})
        assert set(r.context["cl"].result_list) == wanted, state
        page = r.content.decode()
        for key in set(keys.values()):
            assert (key.prefix in page) == (key in wanted), (state, key.name)


def test_the_expiry_filter(admin_client, tenant):
    keys = _keys_in_each_state(tenant)
    expected = {
        "has": {keys["rotating"]},
        "expired": {keys["expired"]},
        "none": {keys["active"], keys["revoked"], keys["replacement"]},
    }
    for value, wanted in expected.items():
        r = admin_client.get(admin_url(ApiKey, "changelist"), {"expiry": value})
        assert set(r.context["cl"].result_list) == wanted, value


def test_the_tenant_page_lists_its_keys_without_secrets(admin_client, tenant):
    key, raw = api_key_issue(tenant=tenant, name="listed", scopes=["usage:read"])
    page = admin_client.get(admin_url(tenant, "change", tenant.pk)).content.decode()
    assert key.prefix in page and "usage:read" in page
    assert raw not in page and key.hashed_key not in page


# -- tenants: members and model access -------------------------------------------------
def test_adding_a_member_through_the_tenant_page_is_audited(admin_client, tenant, staff):
    bob = get_user_model().objects.create_user("bob", password="pw")
    data = admin_form_data(admin_client.get(admin_url(tenant, "change", tenant.pk)))
    n = int(data["memberships-TOTAL_FORMS"])
    data.update(
        {
            "memberships-TOTAL_FORMS": str(n + 1),
            f"memberships-{n}-id": "",
            f"memberships-{n}-tenant": str(tenant.pk),
            f"memberships-{n}-user": str(bob.pk),
            f"memberships-{n}-role": "admin",
        }
    )
    r = admin_client.post(admin_url(tenant, "change", tenant.pk), data, follow=True)
    assert r.status_code == 200
    assert any("was changed successfully" in m for m in admin_messages(r))
    assert Membership.objects.get(tenant=tenant, user=bob).role == "admin"
    [row] = audit_rows("member.added")
    assert row.actor == staff and row.tenant == tenant and row.data == {"role": "admin"}


@pytest.mark.parametrize("change", ["demote", "remove"])
def test_the_last_owner_cannot_be_demoted_or_removed_on_the_tenant_page(
    admin_client, tenant, change
):
    alice = get_user_model().objects.create_user("alice", password="pw")
    member_add(tenant=tenant, user=alice, role="owner")
    data = admin_form_data(admin_client.get(admin_url(tenant, "change", tenant.pk)))
    assert data["memberships-0-user"] == str(alice.pk)
    if change == "demote":
        data["memberships-0-role"] = "member"
    else:
        data["memberships-0-DELETE"] = "on"
    data["name"] = "Renamed in the same submit"

    r = admin_client.post(admin_url(tenant, "change", tenant.pk), data, follow=True)
    assert r.status_code == 200
    verb = "demoted" if change == "demote" else "removed"
    assert f"Nothing was saved: The last owner cannot be {verb}." in admin_messages(r)
    assert not any("successfully" in m for m in admin_messages(r))
    assert Membership.objects.get(tenant=tenant, user=alice).role == "owner"
    tenant.refresh_from_db()
    assert tenant.name == "Acme"
    assert not AuditLog.objects.filter(action__startswith="member.", actor__isnull=False).exists()


def test_ownership_can_be_handed_over_in_one_submit(admin_client, tenant):
    User = get_user_model()
    alice = User.objects.create_user("alice", password="pw")
    bob = User.objects.create_user("bob", password="pw")
    member_add(tenant=tenant, user=alice, role="owner")
    member_add(tenant=tenant, user=bob, role="member")
    data = admin_form_data(admin_client.get(admin_url(tenant, "change", tenant.pk)))
    assert (data["memberships-0-user"], data["memberships-1-user"]) == (str(alice.pk), str(bob.pk))
    data["memberships-0-role"] = "member"
    data["memberships-1-role"] = "owner"
    r = admin_client.post(admin_url(tenant, "change", tenant.pk), data, follow=True)
    assert any("was changed successfully" in m for m in admin_messages(r))
    roles = dict(Membership.objects.filter(tenant=tenant).values_list("user__username", "role"))
    assert roles == {"alice": "member", "bob": "owner"}
    assert len(audit_rows("member.changed")) == 2


def test_model_access_set_on_the_tenant_page_is_audited(admin_client, tenant, gemma, staff):
    data = admin_form_data(admin_client.get(admin_url(tenant, "change", tenant.pk)))
    data["allowed_models"] = [str(gemma.pk)]
    r = admin_client.post(admin_url(tenant, "change", tenant.pk), data, follow=True)
    assert r.status_code == 200
    assert list(tenant.allowed_models.all()) == [gemma]
    [row] = audit_rows("tenant.models_changed")
    assert row.actor == staff and row.data == {"before": [], "after": [gemma.model_id]}

    # Saving again without a change writes nothing more.
    data = admin_form_data(admin_client.get(admin_url(tenant, "change", tenant.pk)))
    admin_client.post(admin_url(tenant, "change", tenant.pk), data)
    assert len(audit_rows("tenant.models_changed")) == 1


# -- audit trail ------------------------------------------------------------------------
def test_the_audit_trail_is_read_only_in_the_admin(admin_client, tenant, api_key):
    row = AuditLog.objects.get(action="api_key.created")
    assert admin_client.get(admin_url(AuditLog, "add")).status_code == 403
    assert admin_client.get(admin_url(AuditLog, "delete", row.pk)).status_code == 403

    page = admin_client.get(admin_url(AuditLog, "change", row.pk)).content.decode()
    assert "api_key.created" in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    r = admin_client.post(admin_url(AuditLog, "change", row.pk), {"action": "tampered"})
    assert r.status_code == 403
    row.refresh_from_db()
    assert row.action == "api_key.created"

    listing = admin_client.get(admin_url(AuditLog, "changelist")).content.decode()
    assert "delete_selected" not in listing and admin_url(AuditLog, "add") not in listing


def test_the_audit_trail_filters_and_searches(admin_client, tenant, other_tenant):
    api_key_issue(tenant=tenant, name="mine")
    theirs, _ = api_key_issue(tenant=other_tenant, name="theirs")
    api_key_revoke(api_key=theirs)

    def listed(**params) -> set[tuple[str, str]]:
        r = admin_client.get(admin_url(AuditLog, "changelist"), params)
        return {(row.tenant.slug, row.action) for row in r.context["cl"].result_list}

    assert listed(tenant__id__exact=tenant.pk) == {("acme", "api_key.created")}
    assert listed(action="api_key.revoked") == {("globex", "api_key.revoked")}
    assert listed(q=theirs.prefix) == {("globex", "api_key.created"), ("globex", "api_key.revoked")}
