from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from accounts.models import Membership, Role
from accounts.services import member_add
from billing.models import UsageRecord
from tests.accounts.conftest import PASSWORD, jwt_client, make_user

pytestmark = pytest.mark.django_db


def login(username, password=PASSWORD, **extra):
    return APIClient().post(
        "/api/auth/token/", {"username": username, "password": password}, format="json", **extra
    )


def test_login_refresh_rotates_and_logout_blacklists(people):
    tokens = login("olivia").json()
    assert {"access", "refresh"} <= set(tokens)
    c = APIClient()
    verify = c.post("/api/auth/token/verify/", {"token": tokens["access"]}, format="json")
    assert verify.status_code == 200
    refreshed = c.post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    assert refreshed.json()["refresh"] != tokens["refresh"]
    # The rotated-out refresh token is blacklisted.
    again = c.post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json")
    assert again.status_code == 401
    new_refresh = refreshed.json()["refresh"]
    assert c.post("/api/auth/logout/", {"refresh": new_refresh}, format="json").status_code == 204
    after = c.post("/api/auth/token/refresh/", {"refresh": new_refresh}, format="json")
    assert after.status_code == 401


def test_wrong_password_is_401_in_error_shape(people):
    r = login("olivia", "wrong-password")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_credentials"


def test_login_is_rate_limited_per_username_and_per_ip(people, settings):
    settings.LLMSITE_LOGIN_RATE = "3/m"
    for _ in range(3):
        assert login("olivia", "nope").status_code == 401
    limited = login("olivia", PASSWORD)
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "requests"
    assert limited["Retry-After"] == "60"
    # Another IP is limited by username as well...
    assert login("olivia", REMOTE_ADDR="10.9.9.9").status_code == 429
    # ...while another username from yet another IP still gets through.
    assert login("mia", REMOTE_ADDR="10.8.8.8").status_code == 200


def test_jwt_calls_v1_in_the_only_tenant_and_usage_is_attributed(people, gemma):
    c = jwt_client("olivia")
    assert c.get("/v1/models").status_code == 200
    r = c.post(
        "/v1/completions",
        {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 1},
        format="json",
        HTTP_X_REQUEST_ID="jwt-usage",
    )
    assert r.status_code == 200
    record = UsageRecord.objects.get(request_id="jwt-usage")
    assert record.user.username == "olivia" and record.tenant.slug == "acme"
    assert record.api_key is None


def test_jwt_user_in_several_tenants_needs_x_tenant(people, other_tenant, gemma):
    member_add(tenant=other_tenant, user=people["owner"], role=Role.MEMBER)
    c = jwt_client("olivia")
    r = c.get("/v1/models")
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Tenant"
    c2 = jwt_client("olivia", tenant_slug="globex")
    r = c2.post(
        "/v1/completions",
        {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 1},
        format="json",
        HTTP_X_REQUEST_ID="jwt-globex",
    )
    assert r.status_code == 200
    assert UsageRecord.objects.get(request_id="jwt-globex").tenant.slug == "globex"


def test_jwt_with_a_tenant_the_user_is_not_in_is_403(people, gemma):
    c = jwt_client("olivia", tenant_slug="globex")
    r = c.get("/v1/models")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


def test_garbage_bearer_token_is_401(gemma):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Bearer not.a.jwt")
    r = c.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_create_user_reads_password_from_stdin_and_attaches(tenant):
    out = StringIO()
    call_command(
        "create_user",
        "carol",
        "--tenant",
        "acme",
        "--role",
        "owner",
        stdin=StringIO(f"{PASSWORD}\n"),
        stdout=out,
    )
    user = get_user_model().objects.get(username="carol")
    assert user.check_password(PASSWORD)
    assert Membership.objects.get(user=user, tenant=tenant).role == "owner"
    assert login("carol").status_code == 200
    call_command(
        "create_user",
        "carol",
        "--tenant",
        "newtenant",
        "--role",
        "member",
        stdin=StringIO(""),
        stdout=out,
    )
    assert Membership.objects.filter(user=user).count() == 2


def test_create_user_rejects_weak_password(tenant):
    with pytest.raises(CommandError, match="Password rejected"):
        call_command("create_user", "dave", "--tenant", "acme", stdin=StringIO("123\n"))
    assert not get_user_model().objects.filter(username="dave").exists()


def test_create_user_refuses_to_demote_the_last_owner(tenant):
    make_user("erin", tenant, Role.OWNER)
    with pytest.raises(CommandError, match="last owner"):
        call_command(
            "create_user", "erin", "--tenant", "acme", "--role", "member", stdin=StringIO("")
        )
