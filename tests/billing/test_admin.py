from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from billing.models import Statement

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    user = get_user_model().objects.create_superuser("root", "root@example.test", "pw-Long-123")
    c = Client()
    c.force_login(user)
    return c


@pytest.mark.parametrize(
    "name",
    [
        "plan",
        "tenantbilling",
        "keylimits",
        "modelprice",
        "usagerecord",
        "dailyusage",
        "statement",
        "budgetalert",
    ],
)
def test_billing_changelists_render(staff, name):
    assert staff.get(f"/admin/billing/{name}/").status_code == 200


def test_statements_are_read_only_in_the_admin(staff, client, tenant):
    client.get("/v1/models")
    from datetime import UTC, datetime

    month = datetime.now(UTC).strftime("%Y-%m")
    call_command("close_billing_period", "--month", month, stdout=StringIO())
    statement = Statement.objects.get(tenant=tenant)
    page = staff.get(f"/admin/billing/statement/{statement.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert staff.get("/admin/billing/statement/add/").status_code == 403
    r = staff.post(f"/admin/billing/statement/{statement.pk}/delete/", {"post": "yes"})
    assert r.status_code == 403 and Statement.objects.filter(pk=statement.pk).exists()


def test_plans_are_editable(staff):
    r = staff.post(
        "/admin/billing/plan/add/", {"name": "pro", "rpm": "100", "soft_budget_percent": "80"}
    )
    assert r.status_code == 302
    from billing.models import Plan

    assert Plan.objects.get(name="pro").rpm == 100


def test_non_staff_cannot_reach_billing_admin(db):
    assert Client().get("/admin/billing/usagerecord/").status_code == 302
