"""Writes for usage accounting."""

from __future__ import annotations

from accounts.models import ApiKey, Tenant
from billing.models import UsageRecord


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
