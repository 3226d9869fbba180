"""Keep the route cache honest (inference/router.py): every change to what a name
resolves to bumps the AuthGeneration counters in the same transaction."""

from __future__ import annotations

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from accounts.generations import auth_generation_bump
from accounts.models import ApiKey, Tenant
from billing.models import ModelPrice
from inference.models import AliasCandidate, LLMModel, RouterAlias


@receiver(post_save, sender=LLMModel)
@receiver(post_delete, sender=LLMModel)
@receiver(post_save, sender=ModelPrice)
@receiver(post_delete, sender=ModelPrice)
@receiver(post_save, sender=RouterAlias)
@receiver(post_delete, sender=RouterAlias)
@receiver(post_save, sender=AliasCandidate)
@receiver(post_delete, sender=AliasCandidate)
def _route_changed(sender, **kwargs) -> None:
    auth_generation_bump(tenant_id=None)  # any tenant may route to it


@receiver(m2m_changed, sender=Tenant.allowed_models.through)
@receiver(m2m_changed, sender=ApiKey.allowed_models.through)
def _allow_list_changed(sender, action: str, **kwargs) -> None:
    if action in ("post_add", "post_remove", "post_clear"):
        auth_generation_bump(tenant_id=None)
