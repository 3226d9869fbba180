"""A tenant admin adds new users or unattached ones, never other tenants' users or staff."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from accounts.models import Membership, Role
from tests.accounts.conftest import jwt_client, make_user

pytestmark = pytest.mark.django_db

MEMBERS = "/api/tenants/acme/members/"


def add(people, username, role="member"):
    return jwt_client(people["admin"].username).post(
        MEMBERS, {"username": username, "role": role}, format="json"
    )


def test_another_tenants_user_cannot_be_attached(people, other_tenant):
    r = add(people, "sam")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "username_unavailable" and err["param"] == "username"
    assert "globex" not in err["message"]
    assert not Membership.objects.filter(tenant__slug="acme", user__username="sam").exists()


@pytest.mark.parametrize("flag", ["is_staff", "is_superuser"])
def test_staff_and_superusers_cannot_be_attached(people, flag):
    get_user_model().objects.create_user(username="root", password="x", **{flag: True})
    r = add(people, "root")
    assert r.status_code == 400 and r.json()["error"]["code"] == "username_unavailable"


def test_the_refusal_reads_the_same_for_staff_and_other_tenants_users(people):
    get_user_model().objects.create_user(username="root", password="x", is_staff=True)
    staff, foreign = add(people, "root").json()["error"], add(people, "sam").json()["error"]
    assert staff["message"].replace("root", "U") == foreign["message"].replace("sam", "U")


def test_a_new_username_is_invited_and_an_unattached_user_added(people):
    assert add(people, "newbie").status_code == 201
    make_user("loner")
    assert add(people, "loner").status_code == 201


def test_an_existing_member_is_already_member(people):
    r = add(people, "mia")
    assert r.status_code == 400 and r.json()["error"]["code"] == "already_member"


def test_a_refused_invite_creates_no_user(people):
    r = add(people, "brand-new", role=Role.OWNER)  # admins cannot grant owner
    assert r.status_code == 403
    assert not get_user_model().objects.filter(username="brand-new").exists()
