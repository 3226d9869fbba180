"""Reads for models, always through the caller's tenant (and key)."""

from __future__ import annotations

from django.db.models import Exists, Q

from accounts.models import ApiKey, Tenant
from inference.models import LLMModel, LLMModelQuerySet
from llmsite.errors import ModelNotFound


def model_queryset(*, tenant: Tenant, api_key: ApiKey | None = None) -> LLMModelQuerySet:
    """Enabled models the caller may use: the tenant's allow-list, narrowed by the key's.

    An empty allow-list means no restriction at that level.
    """
    # One query: each allow-list applies only when it has entries.
    tenant_list = Tenant.allowed_models.through.objects.filter(tenant_id=tenant.pk)
    qs = (
        LLMModel.objects.enabled()
        .select_related("price")
        .filter(Q(allowed_tenants=tenant) | ~Exists(tenant_list))
    )
    if api_key is not None:
        key_list = ApiKey.allowed_models.through.objects.filter(apikey_id=api_key.pk)
        qs = qs.filter(Q(allowed_keys=api_key) | ~Exists(key_list))
    return qs.distinct()


def model_list(*, tenant: Tenant, api_key: ApiKey | None = None) -> list[LLMModel]:
    return list(model_queryset(tenant=tenant, api_key=api_key))


def model_get(*, tenant: Tenant, model_id: str, api_key: ApiKey | None = None) -> LLMModel:
    # A model outside the caller's lists answers exactly like one that does not exist.
    model = model_queryset(tenant=tenant, api_key=api_key).filter(model_id=model_id).first()
    if model is None:
        raise ModelNotFound(model_id)
    return model
