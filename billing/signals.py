"""Limits ride along with a cached API key: changing them bumps the AuthGeneration
of the tenants concerned, in the same transaction (see accounts/services.py)."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.generations import auth_generation_bump
from accounts.models import ApiKey
from accounts.signals import api_key_derived
from billing.models import KeyLimits, Limits, Plan, TenantBilling


@receiver(post_save, sender=TenantBilling)
@receiver(post_delete, sender=TenantBilling)
def _tenant_billing_changed(sender, instance: TenantBilling, **kwargs) -> None:
    auth_generation_bump(tenant_id=instance.tenant_id)


@receiver(post_save, sender=KeyLimits)
@receiver(post_delete, sender=KeyLimits)
def _key_limits_changed(sender, instance: KeyLimits, **kwargs) -> None:
    tenant_id = (
        ApiKey.objects.filter(pk=instance.api_key_id).values_list("tenant_id", flat=True).first()
    )
    if tenant_id is not None:  # else the key is being deleted, which bumps on its own
        auth_generation_bump(tenant_id=tenant_id)


@receiver(post_save, sender=Plan)
@receiver(post_delete, sender=Plan)
def _plan_changed(sender, instance: Plan, **kwargs) -> None:
    auth_generation_bump(tenant_id=None)  # any number of tenants may be on it


@receiver(api_key_derived)
def _key_limits_inherit(sender, key, sources, **kwargs) -> None:
    """A key issued from others gets the tightest of each limit they have."""
    rows = list(KeyLimits.objects.filter(api_key__in=[k.pk for k in sources]))
    values = {}
    for name in Limits.LIMIT_FIELDS:
        set_ = [getattr(row, name) for row in rows if getattr(row, name) is not None]
        if set_:
            values[name] = min(set_)
    if values:
        KeyLimits.objects.create(api_key=key, **values)
