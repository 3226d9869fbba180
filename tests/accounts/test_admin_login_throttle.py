from __future__ import annotations

import pytest
from django.test import Client

from tests.accounts.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"


@pytest.fixture(autouse=True)
def _rate(settings):
    settings.LLMSITE_LOGIN_RATE = "3/m"


def attempt(username="root", password="wrong", ip="10.0.0.1"):
    return Client(REMOTE_ADDR=ip).post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}
    )


def test_admin_login_is_throttled_per_ip():
    for n in range(3):
        assert attempt(username=f"user{n}").status_code == 200  # the form, with an error
    refused = attempt(username="someone-else")
    assert refused.status_code == 429 and refused["Retry-After"] == "60"


def test_admin_login_is_throttled_per_username_across_ips():
    for n in range(3):
        assert attempt(ip=f"10.0.1.{n}").status_code == 200
    assert attempt(ip="10.0.2.1").status_code == 429


def test_a_throttled_admin_login_refuses_even_the_right_password():
    make_user("root").__class__.objects.filter(username="root").update(is_staff=True)
    for _ in range(3):
        attempt()
    assert attempt(password=PASSWORD).status_code == 429


def test_api_and_admin_sign_ins_share_the_counters():
    api = Client(REMOTE_ADDR="10.0.0.1")
    for _ in range(3):
        r = api.post(
            "/api/auth/token/",
            {"username": "root", "password": "wrong"},
            content_type="application/json",
        )
        assert r.status_code == 401
    assert attempt().status_code == 429


def test_admin_login_page_still_signs_staff_in():
    make_user("root").__class__.objects.filter(username="root").update(is_staff=True)
    r = attempt(password=PASSWORD)
    assert r.status_code == 302 and r["Location"] == "/admin/"
