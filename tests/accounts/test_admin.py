from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django import forms
from django.contrib.auth import get_user_model
from django.db import models
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
from inference.model_admin import model_file_path
from inference.models import LLMModel, RouterAlias
from inference.registry import registry

pytestmark = pytest.mark.django_db

RAW_KEY = re.compile(r"sk-llm-[0-9a-f]{12}_[A-Za-z0-9_-]+")


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin_client(staff) -> Client:
    c = Client()
    c.force_login(staff)
    return c


@pytest.fixture
def loaded_gemma(gemma):
    registry.engine_for(gemma).wait_ready(60)
    yield gemma
    # The registry is process-wide: leave the model loaded for the next test.
    registry.engine_for(LLMModel.objects.get(model_id=gemma.model_id)).wait_ready(60)


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _put(form, data: dict) -> None:
    """The values an unchanged browser form would post back."""

    def text(value) -> str:
        if value is None:
            return ""
        return str(value.pk if isinstance(value, models.Model) else value)

    for name, field in form.fields.items():
        key, value = form.add_prefix(name), form[name].value()
        if isinstance(field, forms.BooleanField):
            if value:
                data[key] = "on"
        elif isinstance(field, forms.JSONField):
            data[key] = value  # already the JSON text the page shows
            if field.show_hidden_initial:  # callable defaults: the page posts both
                data[form.add_initial_prefix(name)] = value
        elif isinstance(value, list | tuple):
            data[key] = [text(v) for v in value]
        else:
            data[key] = text(value)


def _form_data(response) -> dict:
    data: dict = {}
    _put(response.context["adminform"].form, data)
    for inline in response.context["inline_admin_formsets"]:
        _put(inline.formset.management_form, data)
        for form in inline.formset.forms:
            _put(form, data)
    return data


def _audit(action: str) -> list[AuditLog]:
    return list(AuditLog.objects.filter(action=action))


# -- access ---------------------------------------------------------------------------
def test_every_admin_page_renders_for_a_superuser(admin_client, tenant, api_key, gemma):
    key = ApiKey.objects.get(tenant=tenant)
    row = AuditLog.objects.first()
    pages = [
        _url(ApiKey, "changelist"),
        _url(ApiKey, "add"),
        _url(ApiKey, "change", key.pk),
        _url(tenant, "changelist"),
        _url(tenant, "add"),
        _url(tenant, "change", tenant.pk),
        _url(LLMModel, "changelist"),
        _url(LLMModel, "add"),
        _url(LLMModel, "change", gemma.pk),
        _url(AuditLog, "changelist"),
        _url(AuditLog, "change", row.pk),
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
            _url(ApiKey, "changelist"),
            _url(ApiKey, "add"),
            _url(tenant, "change", tenant.pk),
            _url(LLMModel, "changelist"),
            _url(AuditLog, "changelist"),
        ):
            r = c.get(url)
            assert r.status_code == 302, url
            assert r["Location"].startswith(reverse("admin:login")), url


# -- API keys -------------------------------------------------------------------------
def test_a_key_created_in_the_admin_is_shown_once_and_only_its_hash_is_stored(
    admin_client, tenant, gemma, staff
):
    r = admin_client.post(
        _url(ApiKey, "add"),
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
    shown = [m for m in _messages(r) if RAW_KEY.search(m)]
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

    [row] = _audit("api_key.created")
    assert row.actor == staff and row.ip == "127.0.0.1" and row.request_id.startswith("req_")

    for url in (_url(ApiKey, "change", key.pk), _url(ApiKey, "changelist")):
        page = admin_client.get(url).content.decode()
        assert key.prefix in page
        assert raw not in page
        assert key.hashed_key not in page


def test_the_add_form_refuses_an_expiry_in_the_past(admin_client, tenant):
    past = timezone.localtime() - timedelta(days=1)
    r = admin_client.post(
        _url(ApiKey, "add"),
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
        _url(ApiKey, "change", key.pk),
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
    assert admin_client.get(_url(ApiKey, "delete", key.pk)).status_code == 403
    assert "delete_selected" not in admin_client.get(_url(ApiKey, "changelist")).content.decode()


def test_the_revoke_action_revokes_and_audits(admin_client, tenant, staff):
    key, raw = api_key_issue(tenant=tenant, name="doomed")
    r = admin_client.post(
        _url(ApiKey, "changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
        follow=True,
    )
    assert "Revoked 1 key(s)." in _messages(r)
    key.refresh_from_db()
    assert key.state == "revoked"
    assert api_key_authenticate(raw=raw) is None
    [row] = _audit("api_key.revoked")
    assert row.actor == staff and row.target_id == str(key.pk)


def test_the_rotate_action_shows_the_new_key_once_and_keeps_the_old_one_for_a_grace_period(
    admin_client, tenant, staff
):
    key, old_raw = api_key_issue(tenant=tenant, name="rolling")
    r = admin_client.post(
        _url(ApiKey, "changelist"),
        {"action": "rotate_selected", "_selected_action": [key.pk]},
        follow=True,
    )
    [message] = [m for m in _messages(r) if RAW_KEY.search(m)]
    new_raw = RAW_KEY.search(message).group(0)
    assert new_raw != old_raw and new_raw in r.content.decode()
    key.refresh_from_db()
    assert key.state == "rotating"
    assert api_key_authenticate(raw=old_raw) == key
    assert api_key_authenticate(raw=new_raw) == key.replaced_by
    assert timedelta(hours=23) < key.expires_at - timezone.now() <= timedelta(hours=24)
    [row] = _audit("api_key.rotated")
    assert row.actor == staff and row.data["new_key"] == key.replaced_by.prefix

    # A second rotation of the same key is refused with a message, not a crash.
    r = admin_client.post(
        _url(ApiKey, "changelist"),
        {"action": "rotate_selected", "_selected_action": [key.pk]},
        follow=True,
    )
    assert r.status_code == 200
    assert any("can be rotated" in m for m in _messages(r))
    assert len(_audit("api_key.rotated")) == 1


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
        r = admin_client.get(_url(ApiKey, "changelist"), {"state": state})
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
        r = admin_client.get(_url(ApiKey, "changelist"), {"expiry": value})
        assert set(r.context["cl"].result_list) == wanted, value


def test_the_tenant_page_lists_its_keys_without_secrets(admin_client, tenant):
    key, raw = api_key_issue(tenant=tenant, name="listed", scopes=["usage:read"])
    page = admin_client.get(_url(tenant, "change", tenant.pk)).content.decode()
    assert key.prefix in page and "usage:read" in page
    assert raw not in page and key.hashed_key not in page


# -- tenants: members and model access -------------------------------------------------
def test_adding_a_member_through_the_tenant_page_is_audited(admin_client, tenant, staff):
    bob = get_user_model().objects.create_user("bob", password="pw")
    data = _form_data(admin_client.get(_url(tenant, "change", tenant.pk)))
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
    r = admin_client.post(_url(tenant, "change", tenant.pk), data, follow=True)
    assert r.status_code == 200
    assert any("was changed successfully" in m for m in _messages(r))
    assert Membership.objects.get(tenant=tenant, user=bob).role == "admin"
    [row] = _audit("member.added")
    assert row.actor == staff and row.tenant == tenant and row.data == {"role": "admin"}


@pytest.mark.parametrize("change", ["demote", "remove"])
def test_the_last_owner_cannot_be_demoted_or_removed_on_the_tenant_page(
    admin_client, tenant, change
):
    alice = get_user_model().objects.create_user("alice", password="pw")
    member_add(tenant=tenant, user=alice, role="owner")
    data = _form_data(admin_client.get(_url(tenant, "change", tenant.pk)))
    assert data["memberships-0-user"] == str(alice.pk)
    if change == "demote":
        data["memberships-0-role"] = "member"
    else:
        data["memberships-0-DELETE"] = "on"
    data["name"] = "Renamed in the same submit"

    r = admin_client.post(_url(tenant, "change", tenant.pk), data, follow=True)
    assert r.status_code == 200
    verb = "demoted" if change == "demote" else "removed"
    assert f"Nothing was saved: The last owner cannot be {verb}." in _messages(r)
    assert not any("successfully" in m for m in _messages(r))
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
    data = _form_data(admin_client.get(_url(tenant, "change", tenant.pk)))
    assert (data["memberships-0-user"], data["memberships-1-user"]) == (str(alice.pk), str(bob.pk))
    data["memberships-0-role"] = "member"
    data["memberships-1-role"] = "owner"
    r = admin_client.post(_url(tenant, "change", tenant.pk), data, follow=True)
    assert any("was changed successfully" in m for m in _messages(r))
    roles = dict(Membership.objects.filter(tenant=tenant).values_list("user__username", "role"))
    assert roles == {"alice": "member", "bob": "owner"}
    assert len(_audit("member.changed")) == 2


def test_model_access_set_on_the_tenant_page_is_audited(admin_client, tenant, gemma, staff):
    data = _form_data(admin_client.get(_url(tenant, "change", tenant.pk)))
    data["allowed_models"] = [str(gemma.pk)]
    r = admin_client.post(_url(tenant, "change", tenant.pk), data, follow=True)
    assert r.status_code == 200
    assert list(tenant.allowed_models.all()) == [gemma]
    [row] = _audit("tenant.models_changed")
    assert row.actor == staff and row.data == {"before": [], "after": [gemma.model_id]}

    # Saving again without a change writes nothing more.
    data = _form_data(admin_client.get(_url(tenant, "change", tenant.pk)))
    admin_client.post(_url(tenant, "change", tenant.pk), data)
    assert len(_audit("tenant.models_changed")) == 1


# -- models -----------------------------------------------------------------------------
def _model_row(admin_client, model_id: str) -> str:
    page = admin_client.get(_url(LLMModel, "changelist")).content.decode()
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
        _url(LLMModel, "changelist"),
        {"action": "unload_selected", "_selected_action": [loaded_gemma.pk]},
        follow=True,
    )
    assert f"{model_id}: unloaded" in _messages(r)
    assert registry.get_loaded(model_id) is None
    [row] = _audit("model.unloaded")
    assert row.actor == staff and row.tenant is None and row.target_repr == model_id
    row = _model_row(admin_client, model_id)
    assert "unloaded" in row and "in use" not in row

    r = admin_client.post(
        _url(LLMModel, "changelist"),
        {"action": "load_selected", "_selected_action": [loaded_gemma.pk]},
        follow=True,
    )
    engine = registry.engine_for(loaded_gemma)
    assert engine.wait_ready(60)
    assert registry.get_loaded(model_id) is engine
    assert any(m.startswith(f"{model_id}: load") for m in _messages(r))
    [row] = _audit("model.loaded")
    assert row.actor == staff and row.tenant is None


def test_the_reload_action_replaces_the_engine(admin_client, loaded_gemma):
    before = registry.get_loaded(loaded_gemma.model_id)
    admin_client.post(
        _url(LLMModel, "changelist"),
        {"action": "reload_selected", "_selected_action": [loaded_gemma.pk]},
    )
    after = registry.engine_for(loaded_gemma)
    assert after.wait_ready(60) and after is not before
    assert len(_audit("model.unloaded")) == 1 and len(_audit("model.loaded")) == 1


def test_a_disabled_model_is_not_loaded(admin_client, gemma):
    ghost = LLMModel.objects.create(model_id="ghost", path="/nowhere/ghost.gguf", enabled=False)
    r = admin_client.post(
        _url(LLMModel, "changelist"),
        {"action": "load_selected", "_selected_action": [ghost.pk]},
        follow=True,
    )
    assert "ghost is disabled; enable it before loading it." in _messages(r)
    assert "ghost" not in registry.loaded_ids()
    assert not _audit("model.loaded")


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
    r = admin_client.post(_url(LLMModel, "add"), form)
    assert "A remote backend needs its base URL." in r.content.decode()
    form.update(base_url="http://10.0.0.7:8000/v1", remote_api_key="sk-upstream-secret")
    r = admin_client.post(_url(LLMModel, "add"), form, follow=True)
    far = LLMModel.objects.get(model_id="far")
    assert far.is_remote and far.remote_api_key == "sk-upstream-secret"
    page = admin_client.get(_url(LLMModel, "change", far.pk)).content.decode()
    assert "sk-upstream-secret" not in page
    # Saving without typing the key keeps it.
    data = _form_data(admin_client.get(_url(LLMModel, "change", far.pk)))
    data["quality"] = "0.9"
    r = admin_client.post(_url(LLMModel, "change", far.pk), data)
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
    r = admin_client.post(_url(RouterAlias, "add"), data, follow=True)
    assert r.status_code == 200
    alias = RouterAlias.objects.get(name="fast")
    assert [c.model.model_id for c in alias.candidates.all()] == ["gemma-3-270m"]
    [row] = _audit("alias.added")
    assert row.actor == staff and row.data["candidates"] == ["gemma-3-270m"]
    assert "gemma-3-270m" in admin_client.get(_url(RouterAlias, "changelist")).content.decode()


def test_a_model_whose_file_does_not_exist_is_refused_with_the_path_named(admin_client, tmp_path):
    r = admin_client.post(_url(LLMModel, "add"), _model_form())
    assert r.status_code == 200
    assert "GGUF file not found: /nonexistent/extra.gguf" in r.content.decode()

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_bytes(b"hello")
    r = admin_client.post(_url(LLMModel, "add"), _model_form(path=str(not_gguf)))
    assert f"Not a GGUF file (bad magic b&#x27;hell&#x27;): {not_gguf}" in r.content.decode()

    r = admin_client.post(_url(LLMModel, "add"), _model_form(path="bundled:no-such-package"))
    assert "bundled model package &#x27;no_such_package&#x27; is not installed" in (
        r.content.decode()
    )
    assert not LLMModel.objects.filter(model_id="extra").exists()
    assert not _audit("model.added")


def test_adding_and_disabling_a_model_are_audited(admin_client, loaded_gemma, staff):
    path = model_file_path(model=loaded_gemma)
    r = admin_client.post(_url(LLMModel, "add"), _model_form(path=str(path)), follow=True)
    assert r.status_code == 200
    extra = LLMModel.objects.get(model_id="extra")
    [row] = _audit("model.added")
    assert row.actor == staff and row.target_repr == "extra" and row.data["path"] == str(path)

    data = _form_data(admin_client.get(_url(LLMModel, "change", extra.pk)))
    del data["enabled"]
    admin_client.post(_url(LLMModel, "change", extra.pk), data)
    extra.refresh_from_db()
    assert extra.enabled is False
    [row] = _audit("model.disabled")
    assert row.actor == staff
    assert not _audit("model.changed")


# -- audit trail ------------------------------------------------------------------------
def test_the_audit_trail_is_read_only_in_the_admin(admin_client, tenant, api_key):
    row = AuditLog.objects.get(action="api_key.created")
    assert admin_client.get(_url(AuditLog, "add")).status_code == 403
    assert admin_client.get(_url(AuditLog, "delete", row.pk)).status_code == 403

    page = admin_client.get(_url(AuditLog, "change", row.pk)).content.decode()
    assert "api_key.created" in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    r = admin_client.post(_url(AuditLog, "change", row.pk), {"action": "tampered"})
    assert r.status_code == 403
    row.refresh_from_db()
    assert row.action == "api_key.created"

    listing = admin_client.get(_url(AuditLog, "changelist")).content.decode()
    assert "delete_selected" not in listing and _url(AuditLog, "add") not in listing


def test_the_audit_trail_filters_and_searches(admin_client, tenant, other_tenant):
    api_key_issue(tenant=tenant, name="mine")
    theirs, _ = api_key_issue(tenant=other_tenant, name="theirs")
    api_key_revoke(api_key=theirs)

    def listed(**params) -> set[tuple[str, str]]:
        r = admin_client.get(_url(AuditLog, "changelist"), params)
        return {(row.tenant.slug, row.action) for row in r.context["cl"].result_list}

    assert listed(tenant__id__exact=tenant.pk) == {("acme", "api_key.created")}
    assert listed(action="api_key.revoked") == {("globex", "api_key.revoked")}
    assert listed(q=theirs.prefix) == {("globex", "api_key.created"), ("globex", "api_key.revoked")}
