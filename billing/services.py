"""Writes for usage accounting."""

from __future__ import annotations

from decimal import Decimal

from accounts.models import ApiKey, Tenant
from billing.models import KeyLimits, Limits, ModelPrice, Plan, TenantBilling, UsageRecord


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
    return UsageRecord.objects.create(
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
    )


def limits_set(*, tenant: Tenant, api_key: ApiKey | None = None, **limits) -> Limits:
    """Set some limits on a tenant (its overrides) or on one of its keys.

    Keyword values: an int/Decimal sets a limit, None leaves it as it is, and
    UNLIMITED clears it.
    """
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
