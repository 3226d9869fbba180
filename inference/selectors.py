"""Reads for models, always through the caller's tenant (and key)."""

from __future__ import annotations

from django.utils import timezone

from accounts.models import ApiKey, Tenant
from inference.models import LLMModel, LLMModelQuerySet, StoredResponse
from llmsite.errors import ModelNotFound, NotFound


def model_queryset(*, tenant: Tenant, api_key: ApiKey | None = None) -> LLMModelQuerySet:
    """Enabled models the caller may use: the tenant's allow-list, narrowed by the key's.

    A level is unrestricted only when its `all_models` flag is on; otherwise an
    empty list means no model (a list emptied by a cascade fails closed).
    """
    qs = LLMModel.objects.enabled().select_related("price")
    if not tenant.all_models:
        qs = qs.filter(allowed_tenants=tenant)
    if api_key is not None and not api_key.all_models:
        qs = qs.filter(allowed_keys=api_key)
    return qs.distinct()


def model_list(*, tenant: Tenant, api_key: ApiKey | None = None) -> list[LLMModel]:
    return list(model_queryset(tenant=tenant, api_key=api_key))


def model_get(*, tenant: Tenant, model_id: str, api_key: ApiKey | None = None) -> LLMModel:
    # A model outside the caller's lists answers exactly like one that does not exist.
    model = model_queryset(tenant=tenant, api_key=api_key).filter(model_id=model_id).first()
    if model is None:
        raise ModelNotFound(model_id)
    return model


def stored_response_get(
    *, tenant: Tenant, response_id: str, param: str | None = None
) -> StoredResponse:
    """The tenant's stored response; another tenant's, an expired or an unknown one is a 404."""
    row = (
        StoredResponse.objects.filter(
            tenant=tenant, response_id=response_id, expires_at__gt=timezone.now()
        )
        .only("response_id", "response", "input_items")
        .first()
    )
    if row is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param=param)
    return row
