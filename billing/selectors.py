"""Reads for usage and statements, always for one tenant."""

from __future__ import annotations

from datetime import date

from django.db.models import QuerySet, Sum

from accounts.models import Tenant
from billing.models import DailyUsage, Statement
from llmsite.errors import NotFound

GROUPS = {"day": "day", "model": "model_id", "key": "key_prefix"}


def usage_summary(*, tenant: Tenant, start: date, end: date, group_by: str) -> list[dict]:
    """Requests, tokens and cost per day, model or key over [start, end) (UTC days)."""
    field = GROUPS[group_by]
    rows = (
        DailyUsage.objects.filter(tenant=tenant, day__gte=start, day__lt=end)
        .values(field)
        .annotate(
            requests=Sum("requests"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost"),
        )
        .order_by(field)
    )
    return [
        {
            group_by: row[field].isoformat() if group_by == "day" else row[field],
            "requests": row["requests"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
            "cost": str(row["cost"]),
        }
        for row in rows
    ]


def statement_list(*, tenant: Tenant) -> QuerySet[Statement]:
    return Statement.objects.filter(tenant=tenant).prefetch_related("lines")


def statement_get(*, tenant: Tenant, month: date) -> Statement:
    statement = statement_list(tenant=tenant).filter(month=month).first()
    if statement is None:
        raise NotFound("No statement for that month.")
    return statement
