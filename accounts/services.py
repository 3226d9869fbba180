"""Writes for tenants and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Tenant

KEY_PREFIX = "sk-llm-"
_PREFIX_LEN = 12
# last_used_at is a hint for operators, not an audit trail: write it at most
# once a minute per key instead of on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough (no brute force
    # to slow down); a slow KDF would only add latency to every request.
    return hashlib.sha256(raw.encode()).hexdigest()


def tenant_get_or_create(*, slug: str, name: str = "") -> Tenant:
    tenant, _ = Tenant.objects.get_or_create(slug=slug, defaults={"name": name or slug})
    return tenant


@transaction.atomic
def api_key_issue(*, tenant: Tenant, name: str = "") -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never available again."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32)
    raw = f"{KEY_PREFIX}{prefix}_{secret}"
    key = ApiKey.objects.create(tenant=tenant, name=name, prefix=prefix, hashed_key=hash_key(raw))
    return key, raw


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """The active key matching `raw`, or None. Constant-time comparison of the hash."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    prefix, _, _secret = raw[len(KEY_PREFIX) :].partition("_")
    if len(prefix) != _PREFIX_LEN:
        return None
    key = (
        ApiKey.objects.select_related("tenant")
        .filter(prefix=prefix, revoked_at__isnull=True, tenant__is_active=True)
        .first()
    )
    # Hash and compare even when no row matched so timing does not reveal prefixes.
    expected = key.hashed_key if key else "0" * 64
    if not hmac.compare_digest(hash_key(raw), expected) or key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
