from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services import api_key_issue, member_add

PASSWORD = "correct-Horse-battery-9"


@pytest.fixture(autouse=True)
def _fresh_ratelimits():
    from django.core.cache import cache

    cache.clear()


def make_user(username: str, tenant=None, role: str = Role.MEMBER):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    if tenant is not None:
        member_add(tenant=tenant, user=user, role=role)
    return user


def jwt_client(username: str, tenant_slug: str | None = None) -> APIClient:
    client = APIClient()
    r = client.post("/api/auth/token/", {"username": username, "password": PASSWORD}, format="json")
    assert r.status_code == 200, r.content
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {r.json()['access']}",
        **({"HTTP_X_TENANT": tenant_slug} if tenant_slug else {}),
    )
    client.tokens = r.json()
    return client


def key_client(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def people(tenant, other_tenant):
    return {
        "owner": make_user("olivia", tenant, Role.OWNER),
        "admin": make_user("adam", tenant, Role.ADMIN),
        "member": make_user("mia", tenant, Role.MEMBER),
        "stranger": make_user("sam", other_tenant, Role.OWNER),
    }


@pytest.fixture
def manage_key(tenant):
    _, raw = api_key_issue(tenant=tenant, name="mgr", scopes=["keys:manage"])
    return raw
