"""Keep the authenticated-key cache honest: every change to a key or a tenant
bumps that tenant's AuthGeneration in the same transaction."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from accounts.generations import auth_generation_bump
from accounts.models import ApiKey, Tenant

# Sent when a key is issued from other keys (minted by a key, or rotated):
# `key` the new key, `sources` the keys it must stay within. Billing's receiver
# copies the tightest limits.
api_key_derived = Signal()


@receiver(post_save, sender=ApiKey)
@receiver(post_delete, sender=ApiKey)
def _api_key_changed(sender, instance: ApiKey, created: bool = False, **kwargs) -> None:
    if not created:  # a new key is in nobody's cache yet
        auth_generation_bump(tenant_id=instance.tenant_id)


@receiver(post_save, sender=Tenant)
@receiver(post_delete, sender=Tenant)
def _tenant_changed(sender, instance: Tenant, created: bool = False, **kwargs) -> None:
    if not created:
        auth_generation_bump(tenant_id=instance.pk)
