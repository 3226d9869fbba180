"""Reads for models, always through the caller's tenant."""

from __future__ import annotations

from accounts.models import Tenant
from inference.models import LLMModel
from llmsite.errors import ModelNotFound


def model_list(*, tenant: Tenant) -> list[LLMModel]:
    # Per-tenant allow-lists arrive with the tenancy issue; today every tenant
    # sees every enabled model.
    return list(LLMModel.objects.enabled())


def model_get(*, tenant: Tenant, model_id: str) -> LLMModel:
    model = LLMModel.objects.enabled().filter(model_id=model_id).first()
    if model is None:
        raise ModelNotFound(model_id)
    return model
