"""Writes for tenants, members, API keys and the audit trail."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from accounts.generations import GenerationCache
from accounts.models import (
    DEFAULT_SCOPES,
    ApiKey,
    AuditLog,
    AuthGeneration,
    Membership,
    Role,
    Scope,
    Tenant,
)
from accounts.signals import api_key_derived
from llmsite.errors import InvalidRequest, PermissionError_

if TYPE_CHECKING:
    from django.contrib.auth.models import User

KEY_PREFIX = "sk-llm-"
_PREFIX_LEN = 12
# last_used_at is a hint for operators, not an audit trail: write it at most
# once a minute per key instead of on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
DEFAULT_ROTATION_GRACE = timedelta(hours=24)
MAX_ROTATION_GRACE = timedelta(days=30)


@dataclass(frozen=True)
class Actor:
    """Who performs a management action, for the audit trail."""

    user: User | None = None
    api_key: ApiKey | None = None
    ip: str | None = None
    request_id: str = ""

    def describe(self) -> str:
        if self.user is not None:
            return f"user:{self.user.get_username()}"
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        return "system"


SYSTEM = Actor()


def audit_record(
    *,
    actor: Actor,
    action: str,
    tenant: Tenant | None = None,
    target: object | None = None,
    data: dict | None = None,
) -> AuditLog:
    # Never pass secrets in `data`: rows are shown to tenant owners and staff.
    return AuditLog.objects.create(
        tenant=tenant,
        actor=actor.user,
        actor_key=actor.api_key,
        actor_repr=actor.describe(),
        action=action,
        target_type=type(target).__name__.lower() if target is not None else "",
        target_id=str(getattr(target, "pk", "") or "") if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        data=data or {},
        ip=actor.ip,
        request_id=actor.request_id[:128],
    )


# -- tenants --------------------------------------------------------------------
def tenant_get_or_create(*, slug: str, name: str = "") -> Tenant:
    tenant, _ = Tenant.objects.get_or_create(slug=slug, defaults={"name": name or slug})
    return tenant


@transaction.atomic
def tenant_models_set(
    *, tenant: Tenant, models: Iterable, all_models: bool | None = None, actor: Actor = SYSTEM
) -> None:
    """Set the tenant's allow-list. `all_models`: every enabled model when the list is
    empty (None: that is what an empty list asks for); it is off whenever the list
    has entries, so that emptying the list later (a cascade) leaves no model."""
    models = list(models)
    all_models = (not models) if all_models is None else (all_models and not models)
    before = sorted(tenant.allowed_models.values_list("model_id", flat=True))
    was_all = tenant.all_models
    tenant.allowed_models.set(models)
    if tenant.all_models != all_models:
        tenant.all_models = all_models
        tenant.save(update_fields=["all_models"])
    after = sorted(m.model_id for m in models)
    if before != after or was_all != all_models:
        data: dict = {"before": before, "after": after}
        if not after:  # only an empty list needs the flag to read: all or none
            data["all_models"] = all_models
        audit_record(
            actor=actor, action="tenant.models_changed", tenant=tenant, target=tenant, data=data
        )


# -- API keys ---------------------------------------------------------------------
def hash_key(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough (no brute force
    # to slow down); a slow KDF would only add latency to every request.
    return hashlib.sha256(raw.encode()).hexdigest()


def _validate_scopes(scopes: Iterable[str] | None) -> list[str]:
    if scopes is None:
        return list(DEFAULT_SCOPES)
    scopes = list(dict.fromkeys(scopes))
    unknown = [s for s in scopes if s not in Scope.values]
    if unknown:
        raise InvalidRequest(
            f"Unknown scope(s): {', '.join(unknown)}; valid: {', '.join(Scope.values)}.",
            param="scopes",
            code="invalid_value",
        )
    return scopes


def _within_minter(
    minter: ApiKey,
    *,
    scopes: list[str],
    expires_at: datetime | None,
    models: list,
    all_models: bool,
) -> tuple[datetime | None, list, bool]:
    """A key minted (or rotated) by a key is at most as broad as that key: no scope it
    lacks, no model outside its list, no later expiry. An expiry or list left out
    is the minter's. Limits are inherited after the row exists (_limits_inherit)."""
    beyond = [s for s in scopes if s not in (minter.scopes or [])]
    if beyond:
        raise PermissionError_(
            f"This API key cannot grant scope(s) it does not hold: {', '.join(beyond)}."
        )
    if minter.expires_at is not None:
        if expires_at is None:
            expires_at = minter.expires_at
        elif expires_at > minter.expires_at:
            raise PermissionError_("A key cannot be made to outlive the API key that issues it.")
    if not minter.all_models:
        mine = list(minter.allowed_models.all())
        if all_models:
            models, all_models = mine, False
        else:
            own = {m.pk for m in mine}
            outside = [m.model_id for m in models if m.pk not in own]
            if outside:
                raise PermissionError_(
                    "This API key cannot grant model(s) outside its own allow-list: "
                    f"{', '.join(outside)}."
                )
    return expires_at, models, all_models


def _limits_inherit(key: ApiKey, sources: list[ApiKey]) -> None:
    """Give `key` the tightest of each limit its sources have (a minting key, the key
    being rotated): a key issued from another never escapes that key's limits.

    Limits are billing's (billing builds on accounts), so billing does the work in
    its receiver of `api_key_derived`, inside this transaction."""
    api_key_derived.send(sender=ApiKey, key=key, sources=sources)


@transaction.atomic
def api_key_issue(
    *,
    tenant: Tenant,
    name: str = "",
    scopes: Iterable[str] | None = None,
    expires_at: datetime | None = None,
    allowed_models: Iterable | None = None,
    all_models: bool | None = None,
    limits_from: ApiKey | None = None,
    actor: Actor = SYSTEM,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never available again.

    `all_models`: no narrowing of the tenant's models (None: when `allowed_models` is
    empty). When the actor is an API key, the new key is at most as broad as it.
    `limits_from`: a key whose limits the new one keeps (rotation).
    """
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidRequest("expires_at must be in the future.", param="expires_at")
    scopes = _validate_scopes(scopes)
    models = list(allowed_models or [])
    all_models = (not models) if all_models is None else (all_models and not models)
    minter = actor.api_key
    if minter is not None:
        if minter.tenant_id != tenant.pk:
            raise PermissionError_("An API key can only issue keys for its own tenant.")
        expires_at, models, all_models = _within_minter(
            minter, scopes=scopes, expires_at=expires_at, models=models, all_models=all_models
        )
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    raw = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=prefix,
        hashed_key=hash_key(raw),
        scopes=scopes,
        expires_at=expires_at,
        all_models=all_models,
        created_by=actor.user,
    )
    if models:
        key.allowed_models.set(models)
    sources = [k for k in (limits_from, minter) if k is not None]
    if sources:
        _limits_inherit(key, sources)
    audit_record(
        actor=actor,
        action="api_key.created",
        tenant=tenant,
        target=key,
        data={"scopes": key.scopes, "expires_at": expires_at.isoformat() if expires_at else None},
    )
    return key, raw


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Actor = SYSTEM) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="api_key.revoked", tenant=api_key.tenant, target=api_key)
    return api_key


@transaction.atomic
def api_key_rotate(
    *, api_key: ApiKey, grace: timedelta = DEFAULT_ROTATION_GRACE, actor: Actor = SYSTEM
) -> tuple[ApiKey, str]:
    """A new key with the same settings; the old one keeps working for `grace`, then stops."""
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if not api_key.is_active or api_key.replaced_by_id is not None:
        raise InvalidRequest(
            "Only an active key that has not been rotated already can be rotated.",
            code="key_not_rotatable",
        )
    if grace < timedelta(0) or grace > MAX_ROTATION_GRACE:
        raise InvalidRequest(
            f"grace_seconds must be between 0 and {int(MAX_ROTATION_GRACE.total_seconds())}.",
            param="grace_seconds",
        )
    new_key, raw = api_key_issue(
        tenant=api_key.tenant,
        name=api_key.name,
        scopes=api_key.scopes,
        expires_at=api_key.expires_at,
        allowed_models=list(api_key.allowed_models.all()),
        all_models=api_key.all_models,
        limits_from=api_key,
        actor=actor,
    )
    ends = timezone.now() + grace
    api_key.expires_at = min(ends, api_key.expires_at) if api_key.expires_at else ends
    api_key.replaced_by = new_key
    api_key.save(update_fields=["expires_at", "replaced_by"])
    audit_record(
        actor=actor,
        action="api_key.rotated",
        tenant=api_key.tenant,
        target=api_key,
        data={"new_key": new_key.prefix, "old_key_expires_at": api_key.expires_at.isoformat()},
    )
    return new_key, raw


def api_key_authenticate(*, raw: str, actor_ip: str | None = None) -> ApiKey | None:
    """The usable key matching `raw`, or None. Constant-time comparison of the hash.

    The key comes with its tenant, the tenant's billing and plan, and its own
    limits (the quota check right after needs them), from this process's cache
    when the generations it was loaded under are still current.
    """
    return api_key_check(raw=raw, actor_ip=actor_ip)[0]


def api_key_check(
    *, raw: str, actor_ip: str | None = None
) -> tuple[ApiKey | None, tuple[int, int] | None]:
    """api_key_authenticate, plus the tenant's AuthGeneration values it was checked
    against just now: the request's other per-process caches (routes) reuse them."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None, None
    prefix, _, _secret = raw[len(KEY_PREFIX) :].partition("_")
    if len(prefix) != _PREFIX_LEN:
        return None, None
    key, generations = _key_cache.get(prefix)
    if key is None:
        key, generations = _key_load(prefix)
    # Hash and compare even when no row matched so timing does not reveal prefixes.
    expected = key.hashed_key if key else "0" * 64
    if not hmac.compare_digest(hash_key(raw), expected) or key is None:
        return None, None
    now = timezone.now()
    if key.expires_at is not None and key.expires_at <= now:
        _audit_expiry_once(key, actor_ip)
        return None, None
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key, generations


# -- the authenticated-key cache --------------------------------------------------------
# Loading a key with its tenant, billing, plan and limits costs a five-table join
# and five model instances per request. A process keeps what it loaded, with the
# AuthGeneration values read in the same statement; a hit costs one primary-key
# read of those two counters. Every change bumps them in its own transaction
# (accounts/signals.py, billing/signals.py), so a revoked key, a deactivated
# tenant or a new limit applies to the very next request in every process.
# Writes that skip signals (queryset.update(), raw SQL) are seen once an entry
# is LLMSITE_KEY_CACHE_SECONDS old. Cached instances are shared between requests:
# read them, never change them (last_used_at excepted, a hint).
_key_cache = GenerationCache()


def _key_load(prefix: str) -> tuple[ApiKey | None, tuple[int, int] | None]:
    generation = AuthGeneration.objects.values("value")
    key = (
        ApiKey.objects.select_related("tenant", "tenant__billing__plan", "limits")
        .filter(prefix=prefix, revoked_at__isnull=True, tenant__is_active=True)
        # Read in the same statement as the rows, so they describe exactly these rows.
        .annotate(
            tenant_generation=Subquery(generation.filter(scope=OuterRef("tenant_id"))),
            global_generation=Subquery(generation.filter(scope=AuthGeneration.GLOBAL)),
        )
        .first()
    )
    if key is None:
        return None, None
    generations = (key.tenant_generation or 0, key.global_generation or 0)
    _key_cache.put(prefix, key, key.tenant_id, generations)
    return key, generations


def _audit_expiry_once(key: ApiKey, ip: str | None) -> None:
    # The flag flips in the same UPDATE that decides who writes the row, so
    # concurrent requests with the same expired key write it exactly once.
    if ApiKey.objects.filter(pk=key.pk, expiry_audited=False).update(expiry_audited=True):
        audit_record(
            actor=Actor(api_key=key, ip=ip),
            action="api_key.expired",
            tenant=key.tenant,
            target=key,
            data={
                "expired_at": key.expires_at.isoformat() if key.expires_at else None,
                "rotated": bool(key.replaced_by_id),
            },
        )


# -- members ------------------------------------------------------------------------
def _owners(tenant: Tenant) -> int:
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).count()


def _check_role_change_allowed(*, acting_role: str | None, old: str | None, new: str | None):
    # Admins manage members and admins; only owners grant or take away ownership.
    if acting_role == Role.ADMIN and Role.OWNER in (old, new):
        raise PermissionError_("Only an owner can grant or remove the owner role.")


@transaction.atomic
def member_add(
    *, tenant: Tenant, user, role: str, actor: Actor = SYSTEM, acting_role: str | None = None
) -> Membership:
    if role not in Role.values:
        raise InvalidRequest(f"role must be one of {', '.join(Role.values)}.", param="role")
    _check_role_change_allowed(acting_role=acting_role, old=None, new=role)
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise InvalidRequest(
            f"{user.get_username()} is already a member of {tenant.slug}.",
            param="username",
            code="already_member",
        )
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    audit_record(
        actor=actor, action="member.added", tenant=tenant, target=membership, data={"role": role}
    )
    return membership


@transaction.atomic
def member_invite(
    *,
    tenant: Tenant,
    username: str,
    email: str = "",
    role: str,
    actor: Actor = SYSTEM,
    acting_role: str | None = None,
) -> Membership:
    """A tenant admin adds someone by username: a new user (created without a
    password), or an existing one who belongs to no tenant and is not staff.

    Users of other tenants and operators are refused with one answer, which says
    neither where the user belongs nor what they are.
    """
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is None:
        user = User(username=username, email=email)
        user.set_unusable_password()
        user.save()
    elif Membership.objects.filter(tenant=tenant, user=user).exists():
        pass  # member_add answers `already_member`, which leaks nothing beyond this tenant
    elif (
        user.is_staff
        or user.is_superuser
        or Membership.objects.filter(user=user).exclude(tenant=tenant).exists()
    ):
        raise InvalidRequest(
            f"The username {username!r} cannot be added to this tenant; "
            "pick another, or ask an operator.",
            param="username",
            code="username_unavailable",
        )
    return member_add(tenant=tenant, user=user, role=role, actor=actor, acting_role=acting_role)


@transaction.atomic
def member_change_role(
    *, membership: Membership, role: str, actor: Actor = SYSTEM, acting_role: str | None = None
) -> Membership:
    if role not in Role.values:
        raise InvalidRequest(f"role must be one of {', '.join(Role.values)}.", param="role")
    # Row locks on the tenant's owners serialise concurrent demotions.
    list(Membership.objects.select_for_update().filter(tenant=membership.tenant, role=Role.OWNER))
    membership.refresh_from_db()
    old = membership.role
    if old == role:
        return membership
    _check_role_change_allowed(acting_role=acting_role, old=old, new=role)
    if old == Role.OWNER and _owners(membership.tenant) <= 1:
        raise InvalidRequest("The last owner cannot be demoted.", code="last_owner")
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        action="member.changed",
        tenant=membership.tenant,
        target=membership,
        data={"from": old, "to": role},
    )
    return membership


@transaction.atomic
def member_remove(
    *, membership: Membership, actor: Actor = SYSTEM, acting_role: str | None = None
) -> None:
    list(Membership.objects.select_for_update().filter(tenant=membership.tenant, role=Role.OWNER))
    membership.refresh_from_db()
    _check_role_change_allowed(acting_role=acting_role, old=membership.role, new=None)
    if membership.role == Role.OWNER and _owners(membership.tenant) <= 1:
        raise InvalidRequest("The last owner cannot be removed.", code="last_owner")
    audit_record(
        actor=actor,
        action="member.removed",
        tenant=membership.tenant,
        target=membership,
        data={"role": membership.role, "username": membership.user.get_username()},
    )
    membership.delete()


@transaction.atomic
def user_create_or_attach(
    *, username: str, tenant_slug: str, role: str, password: str | None, actor: Actor = SYSTEM
) -> tuple[User, Membership, bool]:
    """Create the user (validating the password) or attach an existing one to the tenant."""
    User = get_user_model()
    tenant = tenant_get_or_create(slug=tenant_slug)
    user = User.objects.filter(username=username).first()
    created = user is None
    if user is None:
        if not password:
            raise InvalidRequest("A password is required for a new user.", param="password")
        user = User(username=username)
        validate_password(password, user)
        user.set_password(password)
        user.save()
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is None:
        membership = member_add(tenant=tenant, user=user, role=role, actor=actor)
    elif membership.role != role:
        membership = member_change_role(membership=membership, role=role, actor=actor)
    return user, membership, created
