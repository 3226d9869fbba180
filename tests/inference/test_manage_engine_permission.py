"""Loading, unloading and reloading models needs inference.manage_engine, not just is_staff."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from inference.registry import registry

pytestmark = pytest.mark.django_db

MODEL = "gemma-3-270m"


def bearer(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


@pytest.fixture
def plain_staff():
    return get_user_model().objects.create_user(username="viewer", password="x", is_staff=True)


@pytest.fixture
def loaded(gemma):
    engine = registry.engine_for(gemma)
    engine.wait_ready(60)
    return engine


@pytest.mark.parametrize("action", ["unload", "reload", "load"])
def test_staff_without_the_permission_gets_403(plain_staff, loaded, action):
    r = bearer(plain_staff).post(f"/api/admin/models/{MODEL}/{action}?wait=0")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert "manage_engine" in r.json()["error"]["message"]
    assert registry.get_loaded(MODEL) is loaded


def test_staff_without_the_permission_still_reads_stats(plain_staff, gemma):
    assert bearer(plain_staff).get("/api/admin/stats").status_code == 200


def test_staff_with_the_permission_may_unload(plain_staff, loaded):
    plain_staff.user_permissions.add(Permission.objects.get(codename="manage_engine"))
    r = bearer(plain_staff).post(f"/api/admin/models/{MODEL}/unload")
    assert r.status_code == 200, r.content
    assert registry.get_loaded(MODEL) is None


def test_admin_actions_are_hidden_and_refused_without_the_permission(plain_staff, loaded, gemma):
    for codename in ("view_llmmodel", "change_llmmodel"):
        plain_staff.user_permissions.add(Permission.objects.get(codename=codename))
    browser = Client()
    browser.force_login(plain_staff)
    page = browser.get("/admin/inference/llmmodel/")
    assert page.status_code == 200
    assert b"unload_selected" not in page.content
    browser.post(
        "/admin/inference/llmmodel/",
        {"action": "unload_selected", "_selected_action": [gemma.pk]},
    )
    assert registry.get_loaded(MODEL) is loaded
