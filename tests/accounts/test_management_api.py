from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, AuditLog, Membership
from accounts.services import api_key_issue, api_key_revoke
from tests.accounts.conftest import jwt_client, key_client

pytestmark = pytest.mark.django_db

KEYS = "/api/tenants/acme/keys/"
MEMBERS = "/api/tenants/acme/members/"
AUDIT = "/api/tenants/acme/audit/"


def caller(kind: str, people, tenant) -> APIClient:
    if kind in people:
        return jwt_client(people[kind].username)
    if kind == "anonymous":
        return APIClient()
    if kind == "revoked_key":
        key, raw = api_key_issue(tenant=tenant, scopes=["keys:manage"])
        api_key_revoke(api_key=key)
        return key_client(raw)
    if kind == "expired_key":
        _, raw = api_key_issue(
            tenant=tenant, scopes=["keys:manage"], expires_at=timezone.now() + timedelta(seconds=1)
        )
        ApiKey.objects.filter(expires_at__isnull=False).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        return key_client(raw)
    if kind == "manage_key":
        # With `inference` too: a key grants no scope it lacks (the new key's default).
        scopes = ["keys:manage", "inference"]
        return key_client(api_key_issue(tenant=tenant, scopes=scopes)[1])
    if kind == "inference_key":
        return key_client(api_key_issue(tenant=tenant, scopes=["inference"])[1])
    raise AssertionError(kind)


KINDS = [
    "owner",
    "admin",
    "member",
    "stranger",
    "anonymous",
    "revoked_key",
    "expired_key",
    "manage_key",
    "inference_key",
]

MATRIX = {
    #                owner admin member stranger anon revoked expired manage_key inference_key
    "keys.list": [200, 200, 200, 404, 401, 401, 401, 200, 403],
    "keys.create": [201, 201, 403, 404, 401, 401, 401, 201, 403],
    "keys.revoke": [200, 200, 403, 404, 401, 401, 401, 200, 403],
    "keys.rotate": [201, 201, 403, 404, 401, 401, 401, 201, 403],
    "members.list": [200, 200, 200, 404, 401, 401, 401, 403, 403],
    "members.add": [201, 201, 403, 404, 401, 401, 401, 403, 403],
    "audit.list": [200, 403, 403, 404, 401, 401, 401, 403, 403],
}


def perform(op: str, client: APIClient, tenant):
    target, _ = api_key_issue(tenant=tenant, name="target")
    if op == "keys.list":
        return client.get(KEYS)
    if op == "keys.create":
        return client.post(KEYS, {"name": "new"}, format="json")
    if op == "keys.revoke":
        return client.post(f"{KEYS}{target.prefix}/revoke/")
    if op == "keys.rotate":
        return client.post(f"{KEYS}{target.prefix}/rotate/", {}, format="json")
    if op == "members.list":
        return client.get(MEMBERS)
    if op == "members.add":
        return client.post(MEMBERS, {"username": "newbie", "role": "member"}, format="json")
    if op == "audit.list":
        return client.get(AUDIT)
    raise AssertionError(op)


@pytest.mark.parametrize("op", list(MATRIX))
@pytest.mark.parametrize("kind", KINDS)
def test_access_matrix(op, kind, people, tenant):
    expected = MATRIX[op][KINDS.index(kind)]
    r = perform(op, caller(kind, people, tenant), tenant)
    assert r.status_code == expected, (op, kind, r.content)
    if expected >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if expected == 401:
        assert r.json()["error"]["code"] == "invalid_api_key"
    if expected == 403:
        assert r.json()["error"]["code"] == "permission_denied"


def test_created_key_is_shown_once_and_works_on_v1(people, tenant, gemma):
    owner = jwt_client("olivia")
    r = owner.post(KEYS, {"name": "ci", "scopes": ["inference"]}, format="json")
    assert r.status_code == 201
    raw = r.json()["key"]
    assert raw.startswith("sk-llm-") and r.json()["id"] in raw
    listed = owner.get(KEYS).json()
    assert all("key" not in k for k in listed)
    assert raw not in owner.get(f"{KEYS}{r.json()['id']}/").content.decode()
    assert key_client(raw).get("/v1/models").status_code == 200


def test_rotation_grace_window(people, tenant, gemma):
    owner = jwt_client("olivia")
    old = owner.post(KEYS, {"name": "svc"}, format="json").json()
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        r = owner.post(f"{KEYS}{old['id']}/rotate/", {"grace_seconds": 3600}, format="json")
        assert r.status_code == 201
        new_raw = r.json()["key"]
        assert r.json()["name"] == "svc" and r.json()["scopes"] == old["scopes"]
        clock.shift(timedelta(minutes=59))
        assert key_client(old["key"]).get("/v1/models").status_code == 200
        assert key_client(new_raw).get("/v1/models").status_code == 200
        clock.shift(timedelta(minutes=2))
        gone = key_client(old["key"]).get("/v1/models")
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"
        assert key_client(new_raw).get("/v1/models").status_code == 200
    actions = list(AuditLog.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert "api_key.rotated" in actions and actions.count("api_key.expired") == 1


def test_rotating_twice_is_refused(people, tenant):
    owner = jwt_client("olivia")
    old = owner.post(KEYS, {"name": "svc"}, format="json").json()
    assert owner.post(f"{KEYS}{old['id']}/rotate/", {}, format="json").status_code == 201
    again = owner.post(f"{KEYS}{old['id']}/rotate/", {}, format="json")
    assert again.status_code == 400


def test_other_tenants_key_is_404(people, tenant, other_tenant):
    foreign, _ = api_key_issue(tenant=other_tenant, name="theirs")
    owner = jwt_client("olivia")
    assert owner.get(f"{KEYS}{foreign.prefix}/").status_code == 404
    assert owner.post(f"{KEYS}{foreign.prefix}/revoke/").status_code == 404
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_member_can_read_keys_but_never_secrets(people, tenant):
    _, raw = api_key_issue(tenant=tenant, name="x")
    body = jwt_client("mia").get(KEYS).content.decode()
    assert raw not in body and "hashed_key" not in body


def test_members_add_change_remove_and_last_owner_rule(people, tenant):
    owner = jwt_client("olivia")
    assert (
        owner.post(MEMBERS, {"username": "adam", "role": "member"}, format="json").status_code
        == 400
    )  # already a member
    r = owner.post(MEMBERS, {"username": "newbie", "role": "admin"}, format="json")
    assert r.status_code == 201 and r.json()["role"] == "admin"
    r = owner.patch(f"{MEMBERS}newbie/", {"role": "member"}, format="json")
    assert r.status_code == 200 and r.json()["role"] == "member"
    assert owner.delete(f"{MEMBERS}newbie/").status_code == 204
    # The only owner can neither demote nor remove herself.
    r = owner.patch(f"{MEMBERS}olivia/", {"role": "admin"}, format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "last_owner"
    assert owner.delete(f"{MEMBERS}olivia/").status_code == 400
    assert Membership.objects.get(user__username="olivia").role == "owner"
    actions = set(AuditLog.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert {"member.added", "member.changed", "member.removed"} <= actions


def test_admin_cannot_touch_owners(people, tenant):
    admin = jwt_client("adam")
    assert admin.patch(f"{MEMBERS}olivia/", {"role": "member"}, format="json").status_code == 403
    assert admin.delete(f"{MEMBERS}olivia/").status_code == 403
    assert admin.post(MEMBERS, {"username": "x", "role": "owner"}, format="json").status_code == 403


def test_audit_rows_for_key_actions_carry_actor_ip_and_request_id(people, tenant):
    owner = jwt_client("olivia")
    key = owner.post(KEYS, {"name": "a"}, format="json", HTTP_X_REQUEST_ID="trace-1").json()
    owner.post(f"{KEYS}{key['id']}/revoke/", HTTP_X_REQUEST_ID="trace-2")
    rows = owner.get(AUDIT).json()["results"]
    by_action = {row["action"]: row for row in rows}
    created, revoked = by_action["api_key.created"], by_action["api_key.revoked"]
    assert created["actor"] == "user:olivia" and created["request_id"] == "trace-1"
    assert revoked["request_id"] == "trace-2" and revoked["ip"] == "127.0.0.1"
    assert key["key"] not in str(rows)


def test_audit_log_rows_are_append_only(people, tenant):
    jwt_client("olivia").post(KEYS, {"name": "a"}, format="json")
    row = AuditLog.objects.first()
    row.action = "tampered"
    with pytest.raises(ValueError):
        row.save()
    with pytest.raises(ValueError):
        row.delete()


def test_key_with_unknown_model_in_allow_list_is_400(people, tenant, gemma):
    r = jwt_client("olivia").post(KEYS, {"allowed_models": ["nope"]}, format="json")
    assert r.status_code == 400 and r.json()["error"]["param"] == "allowed_models"


def test_bad_scope_is_400(people, tenant):
    r = jwt_client("olivia").post(KEYS, {"scopes": ["root"]}, format="json")
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("scopes")
