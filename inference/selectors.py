"""Reads for models, always through the caller's tenant (and key)."""

from __future__ import annotations

from accounts.models import ApiKey, Tenant
from inference.models import LLMModel, LLMModelQuerySet
from llmsite.errors import ModelNotFound


def model_queryset(*, tenant: Tenant, api_key: ApiKey | None = None) -> LLMModelQuerySet:
    """Enabled models the caller may use: the tenant's allow-list, narrowed by the key's.

    An empty allow-list means no restriction at that level.
    """
    qs = LLMModel.objects.enabled()
    if tenant.allowed_models.exists():
        qs = qs.filter(allowed_tenants=tenant)
    if api_key is not None and api_key.allowed_models.exists():
        qs = qs.filter(allowed_keys=api_key)
    return qs


def model_list(*, tenant: Tenant, api_key: ApiKey | None = None) -> list[LLMModel]:
    return list(model_queryset(tenant=tenant, api_key=api_key))


def model_get(*, tenant: Tenant, model_id: str, api_key: ApiKey | None = None) -> LLMModel:
    # A model outside the caller's lists answers exactly like one that does not exist.
    model = model_queryset(tenant=tenant, api_key=api_key).filter(model_id=model_id).first()
    if model is None:
        raise ModelNotFound(model_id)
    return model
