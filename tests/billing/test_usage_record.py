"""The usage record that every request writes: its statement and its indexes."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.services import api_key_issue
from billing.models import DailyUsage, UsageRecord
from billing.services import usage_record

pytestmark = pytest.mark.django_db


def write(tenant, key, request_id: str) -> UsageRecord:
    return usage_record(
        tenant=tenant,
        api_key=key,
        endpoint="chat.completions",
        model_id="gemma-3-270m",
        end_user="",
        prompt_tokens=12,
        completion_tokens=3,
        status="ok",
        request_id=request_id,
        latency_ms=40,
        ttft_ms=20,
    )


def test_the_record_and_its_rollup_land(tenant):
    key, _ = api_key_issue(tenant=tenant)
    records = [write(tenant, key, f"req-{i}") for i in range(3)]
    stored = UsageRecord.objects.get(pk=records[-1].pk)
    assert (stored.request_id, stored.api_key_id, stored.total_tokens) == ("req-2", key.pk, 15)
    rollup = DailyUsage.objects.get(tenant=tenant, key_prefix=key.prefix)
    assert (rollup.requests, rollup.prompt_tokens, rollup.completion_tokens) == (3, 36, 9)


def test_postgresql_plans_the_record_statement_once_per_connection(tenant):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    key, _ = api_key_issue(tenant=tenant)
    with CaptureQueriesContext(connection) as logged:
        for i in range(3):
            write(tenant, key, f"req-{i}")
    # The query log shows the prepared statement with its values, as any other.
    assert ["'req-2'" in query["sql"] for query in logged.captured_queries] == [False, False, True]
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()
    # The record's statement, run three times from one preparation; the ORM's
    # queries (the tenant, the key) are not prepared.
    assert len(prepared) == 1, prepared
    statement, runs = prepared[0]
    assert "INSERT INTO" in statement and "ON CONFLICT" in statement
    assert runs == 3


def test_each_indexed_column_of_the_record_leads_one_index(db):
    """Every request inserts a record, and each index is a write more: no column
    leads two indexes (tenant and key lead their (…, created_at) ones)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, UsageRecord._meta.db_table)
    leading = Counter(
        info["columns"][0]
        for info in constraints.values()
        if info["index"] and not info["primary_key"] and not info["unique"]
    )
    assert leading == {"tenant_id": 1, "api_key_id": 1, "request_id": 1, "user_id": 1}
