"""Writes for usage accounting."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache

from django.core.mail import send_mail
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from billing.models import (
    BudgetAlert,
    ConcurrencyLease,
    DailyUsage,
    KeyLimits,
    Limits,
    ModelPrice,
    Plan,
    QuotaCounter,
    Statement,
    StatementLine,
    TenantBilling,
    UsageRecord,
)
from llmsite.db import fetch_one_prepared


def _rollup_add(record: UsageRecord) -> None:
    """Add one record to its day's roll-up: an UPDATE with F(), or the first INSERT."""
    key = {
        "tenant_id": record.tenant_id,
        "day": record.created_at.astimezone(UTC).date(),
        "model_id": record.model_id,
        "key_prefix": record.api_key.prefix if record.api_key else "",
    }
    increments = {
        "requests": F("requests") + 1,
        "prompt_tokens": F("prompt_tokens") + record.prompt_tokens,
        "completion_tokens": F("completion_tokens") + record.completion_tokens,
        "cost": F("cost") + record.cost,
    }
    if DailyUsage.objects.filter(**key).update(**increments):
        return
    try:
        with transaction.atomic():
            DailyUsage.objects.create(
                **key,
                requests=1,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost=record.cost,
            )
    except IntegrityError:  # another process inserted it first
        DailyUsage.objects.filter(**key).update(**increments)


_ROLLUP_KEY = ("tenant_id", "day", "model_id", "key_prefix")
_ROLLUP_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost")
_RECORD_WITH_ROLLUP = """
    WITH record AS (INSERT INTO {records} ({columns}) VALUES ({values}) RETURNING {pk})
    INSERT INTO {rollups} AS rollup ({key}, {sums}) VALUES ({rollup_values})
    ON CONFLICT ({key}) DO UPDATE SET {additions}
    RETURNING (SELECT {pk} FROM record)
"""


@cache
def _record_with_rollup_sql() -> tuple[str, tuple]:
    """PostgreSQL: the record and its roll-up in one statement, so one round trip
    and one commit (a statement is atomic on its own, and ON CONFLICT makes the
    roll-up's first insert safe against a concurrent one)."""
    qn = connection.ops.quote_name
    fields = tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)
    # Concrete fields always have a column; the stubs allow None for any field.
    columns = [str(f.column) for f in fields]
    pk_column = str(UsageRecord._meta.pk.column)
    sql = _RECORD_WITH_ROLLUP.format(  # identifiers from the models' metadata only
        records=qn(UsageRecord._meta.db_table),
        columns=", ".join(qn(c) for c in columns),
        values=", ".join(["%s"] * len(fields)),
        pk=qn(pk_column),
        rollups=qn(DailyUsage._meta.db_table),
        key=", ".join(qn(c) for c in _ROLLUP_KEY),
        sums=", ".join(qn(c) for c in _ROLLUP_SUMS),
        rollup_values=", ".join(["%s"] * (len(_ROLLUP_KEY) + len(_ROLLUP_SUMS))),
        additions=", ".join(f"{qn(c)} = rollup.{qn(c)} + EXCLUDED.{qn(c)}" for c in _ROLLUP_SUMS),
    )
    return sql, fields


def _insert_with_rollup(record: UsageRecord) -> None:
    sql, fields = _record_with_rollup_sql()
    rollup = {
        "tenant_id": record.tenant_id,
        "day": record.created_at.astimezone(UTC).date(),
        "model_id": record.model_id,
        "key_prefix": record.api_key.prefix if record.api_key else "",
        "requests": 1,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost": record.cost,
    }
    db = connections[DEFAULT_DB_ALIAS]  # the proxy would look it up for every field
    rollup_field = {f.attname: f for f in DailyUsage._meta.concrete_fields}
    params = [f.get_db_prep_save(getattr(record, f.attname), db) for f in fields]
    params += [rollup_field[name].get_db_prep_save(v, db) for name, v in rollup.items()]
    row = fetch_one_prepared(sql, params)
    assert row is not None  # RETURNING always gives the row
    record.pk = row[0]
    record._state.adding = False
    record._state.db = db.alias


def usage_record(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    user=None,
    endpoint: str,
    model_id: str,
    end_user: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost=0,
    status: str,
    error_code: str = "",
    request_id: str,
    latency_ms: int,
    ttft_ms: int | None,
) -> UsageRecord:
    """Write a request's usage record and add it to its daily roll-up, atomically."""
    record = UsageRecord(
        tenant=tenant,
        api_key=api_key,
        user=user,
        endpoint=endpoint,
        model_id=model_id,
        end_user=end_user or "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        status=status,
        error_code=error_code[:64],
        request_id=request_id,
        latency_ms=max(0, latency_ms),
        ttft_ms=ttft_ms,
        created_at=timezone.now(),
    )
    if connection.vendor == "postgresql":
        _insert_with_rollup(record)
        return record
    with transaction.atomic():
        record.save(force_insert=True)
        _rollup_add(record)
    return record


@transaction.atomic  # the change and its AuthGeneration bump (billing/signals.py) commit together
def limits_set(*, tenant: Tenant, api_key: ApiKey | None = None, **limits) -> Limits:
    """Set some limits on a tenant (its overrides) or on one of its keys.

    Keyword values: an int/Decimal sets a limit, None leaves it as it is, and
    UNLIMITED clears it.
    """
    row: KeyLimits | TenantBilling
    if api_key is not None:
        if api_key.tenant_id != tenant.pk:
            raise ValueError("the key belongs to another tenant")
        row, _ = KeyLimits.objects.get_or_create(api_key=api_key)
    else:
        row, _ = TenantBilling.objects.get_or_create(tenant=tenant)
    changed = []
    for name, value in limits.items():
        if name not in Limits.LIMIT_FIELDS:
            raise ValueError(f"unknown limit {name}")
        if value is None:
            continue
        setattr(row, name, None if value is UNLIMITED else value)
        changed.append(name)
    if changed:
        row.full_clean()
        row.save(update_fields=changed)
    return row


@transaction.atomic
def plan_assign(*, tenant: Tenant, plan: Plan | None) -> TenantBilling:
    row, _ = TenantBilling.objects.get_or_create(tenant=tenant)
    row.plan = plan
    row.save(update_fields=["plan"])
    return row


def price_set(*, model, prompt_per_million: Decimal, completion_per_million: Decimal):
    if prompt_per_million < 0 or completion_per_million < 0:
        raise ValueError("prices cannot be negative")
    row, _ = ModelPrice.objects.update_or_create(
        model=model,
        defaults={
            "prompt_per_million": prompt_per_million,
            "completion_per_million": completion_per_million,
        },
    )
    return row


UNLIMITED = object()


def month_bounds(month: date) -> tuple[date, date]:
    start = month.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


@transaction.atomic
def statement_close(*, tenant: Tenant, month: date) -> Statement | None:
    """Write (or rewrite) a tenant's statement for a month from the daily roll-ups.

    Idempotent: closing the same month twice gives the same statement.
    """
    start, end = month_bounds(month)
    lines = list(
        DailyUsage.objects.filter(tenant=tenant, day__gte=start, day__lt=end)
        .values("model_id")
        .annotate(
            n=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"), cost=Sum("cost")
        )
        .order_by("model_id")
    )
    Statement.objects.filter(tenant=tenant, month=start).delete()
    if not lines:
        return None
    statement = Statement.objects.create(
        tenant=tenant,
        month=start,
        requests=sum(line["n"] for line in lines),
        prompt_tokens=sum(line["p"] for line in lines),
        completion_tokens=sum(line["c"] for line in lines),
        total=sum((line["cost"] for line in lines), Decimal(0)),
    )
    StatementLine.objects.bulk_create(
        StatementLine(
            statement=statement,
            model_id=line["model_id"],
            requests=line["n"],
            prompt_tokens=line["p"],
            completion_tokens=line["c"],
            cost=line["cost"],
        )
        for line in lines
    )
    return statement


def usage_prune(*, older_than_days: int, now: datetime | None = None) -> int:
    """Delete raw usage records older than N days; the daily roll-ups stay."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=older_than_days)
    deleted, _ = UsageRecord.objects.filter(created_at__lt=cutoff).delete()
    # The database quota path's counters of past windows are dead weight too.
    QuotaCounter.objects.filter(expires_at__lt=now).delete()
    ConcurrencyLease.objects.filter(expires_at__lt=now).delete()
    return deleted


def budget_check(*, tenant: Tenant) -> BudgetAlert | None:
    """Warn once a month when spend crosses the soft share of the monthly budget.

    Sends an email through Django's email backend (to the billing email, else the
    tenant's owners) and writes an audit row. The hard limit itself is enforced
    by the quota reservation, which answers 429 insufficient_quota.
    """
    from accounts.models import Membership, Role
    from accounts.services import SYSTEM, audit_record
    from billing.quota import tenant_limits

    limits = tenant_limits(tenant)
    if limits.monthly_budget is None or limits.monthly_budget <= 0:
        return None
    billing = TenantBilling.objects.select_related("plan").filter(tenant=tenant).first()
    percent = billing.plan.soft_budget_percent if billing and billing.plan else 80
    start, end = month_bounds(timezone.now().astimezone(UTC).date())
    spent = DailyUsage.objects.filter(tenant=tenant, day__gte=start, day__lt=end).aggregate(
        total=Sum("cost")
    )["total"] or Decimal(0)
    if spent * 100 < limits.monthly_budget * percent:
        return None
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                tenant=tenant, month=start, spent=spent, budget=limits.monthly_budget
            )
    except IntegrityError:
        return None  # already warned this month
    recipients = (
        [billing.billing_email]
        if billing and billing.billing_email
        else [
            m.user.email
            for m in Membership.objects.filter(tenant=tenant, role=Role.OWNER).select_related(
                "user"
            )
            if m.user.email
        ]
    )
    if recipients:
        send_mail(
            subject=f"[llmsite] {tenant.name}: {percent}% of the monthly budget used",
            message=(
                f"Tenant {tenant.slug} has spent {spent} of its {limits.monthly_budget} budget "
                f"for {start:%Y-%m}. Requests are refused once the budget is reached."
            ),
            from_email=None,
            recipient_list=recipients,
            fail_silently=True,
        )
    audit_record(
        actor=SYSTEM,
        action="billing.soft_budget_reached",
        tenant=tenant,
        target=alert,
        data={
            "spent": str(spent),
            "budget": str(limits.monthly_budget),
            "percent": percent,
            "notified": len(recipients),
        },
    )
    return alert
