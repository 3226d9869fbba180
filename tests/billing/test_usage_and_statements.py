from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.services import api_key_issue
from billing.models import DailyUsage, Statement, UsageRecord
from billing.services import usage_prune

pytestmark = pytest.mark.django_db


def models_call(client):
    return client.get("/v1/models")


def complete(client, model="gemma-3-270m"):
    return client.post(
        "/v1/completions",
        {"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0},
        format="json",
    )


@pytest.fixture
def usage_client(tenant):
    _, raw = api_key_issue(tenant=tenant, scopes=["usage:read"])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return c


def test_usage_by_day_model_and_key_and_csv(client, usage_client, tenant, gemma):
    call_command(
        "set_price", "gemma-3-270m", "--prompt", "100", "--completion", "200", stdout=StringIO()
    )
    usages = [complete(client).json()["usage"] for _ in range(3)]
    r = usage_client.get("/api/tenants/acme/usage?group_by=model")
    assert r.status_code == 200
    (row,) = r.json()["data"]
    assert row["model"] == "gemma-3-270m" and row["requests"] == 3
    assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert Decimal(row["cost"]) == sum(
        (UsageRecord.objects.values_list("cost", flat=True)), Decimal(0)
    )
    by_day = usage_client.get("/api/tenants/acme/usage/?group_by=day").json()["data"]
    assert by_day[0]["day"] == datetime.now(UTC).date().isoformat()
    by_key = usage_client.get("/api/tenants/acme/usage/?group_by=key").json()["data"]
    assert len(by_key) == 1 and by_key[0]["requests"] == 3
    as_csv = usage_client.get("/api/tenants/acme/usage/?group_by=model&format=csv")
    assert as_csv["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.content.decode())))
    assert rows[0]["model"] == "gemma-3-270m" and rows[0]["requests"] == "3"


def test_usage_needs_the_usage_read_scope(client, tenant):
    r = client.get("/api/tenants/acme/usage/")
    assert r.status_code == 403


def test_usage_rejects_bad_parameters(usage_client):
    assert usage_client.get("/api/tenants/acme/usage/?group_by=color").status_code == 400
    assert usage_client.get("/api/tenants/acme/usage/?start=yesterday").status_code == 400
    r = usage_client.get("/api/tenants/acme/usage/?start=2026-02-01&end=2026-01-01")
    assert r.status_code == 400


def test_other_tenant_usage_is_404(usage_client, other_tenant):
    assert usage_client.get("/api/tenants/globex/usage/").status_code == 404


def test_month_end_and_leap_day_boundaries_in_utc(client, tenant, gemma):
    # 23:59:59 on 29 Feb 2028 (leap day) and one second later are different days and months.
    with time_machine.travel(datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC), tick=False):
        models_call(client)
    with time_machine.travel(datetime(2028, 3, 1, 0, 0, 0, tzinfo=UTC), tick=False):
        models_call(client)
        models_call(client)
    days = dict(DailyUsage.objects.values_list("day", "requests"))
    assert days == {datetime(2028, 2, 29).date(): 1, datetime(2028, 3, 1).date(): 2}
    call_command("close_billing_period", "--month", "2028-02", stdout=StringIO())
    call_command("close_billing_period", "--month", "2028-03", stdout=StringIO())
    feb = Statement.objects.get(tenant=tenant, month="2028-02-01")
    mar = Statement.objects.get(tenant=tenant, month="2028-03-01")
    assert (feb.requests, mar.requests) == (1, 2)


def test_close_billing_period_is_idempotent_with_a_line_per_model(
    client, usage_client, tenant, gemma
):
    from inference.models import LLMModel

    LLMModel.objects.create(model_id="other", path=gemma.path, n_ctx=256)
    call_command("set_price", "other", "--prompt", "1", "--completion", "1", stdout=StringIO())
    complete(client)
    complete(client, "other")
    month = datetime.now(UTC).strftime("%Y-%m")
    call_command("close_billing_period", "--month", month, stdout=StringIO())
    first = usage_client.get(f"/api/tenants/acme/statements/{month}/").json()
    call_command("close_billing_period", "--month", month, stdout=StringIO())
    second = usage_client.get(f"/api/tenants/acme/statements/{month}/").json()
    assert Statement.objects.filter(tenant=tenant).count() == 1
    first.pop("closed_at"), second.pop("closed_at")
    assert first == second
    assert [line["model_id"] for line in first["lines"]] == ["gemma-3-270m", "other"]
    assert Decimal(first["total"]) == sum(Decimal(line["cost"]) for line in first["lines"])
    assert first["requests"] == 2


def test_pruning_drops_dead_quota_counters(client, tenant, settings):
    from billing.models import QuotaCounter

    settings.LLMSITE_QUOTA_BACKEND = "db"
    call_command("set_quota", "--tenant", "acme", "--rpm", "100", stdout=StringIO())
    models_call(client)
    assert QuotaCounter.objects.count() >= 1
    later = datetime.now(UTC) + timedelta(days=3)
    usage_prune(older_than_days=30, now=later)
    assert QuotaCounter.objects.count() == 0


def test_pruning_raw_records_keeps_the_rollups(client, tenant, gemma):
    old = datetime.now(UTC) - timedelta(days=40)
    with time_machine.travel(old, tick=False):
        models_call(client)
    models_call(client)
    assert usage_prune(older_than_days=30) == 1
    assert UsageRecord.objects.count() == 1
    assert sum(DailyUsage.objects.values_list("requests", flat=True)) == 2


def test_close_billing_period_rejects_a_bad_month(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="2026-01"):
        call_command("close_billing_period", "--month", "January")
