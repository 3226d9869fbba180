"""Reads for tenants, keys, members and the audit trail, always scoped to one tenant."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import QuerySet
from django.utils.module_loading import import_string

from accounts.models import ApiKey, AuditLog, Membership, Role, Tenant
from llmsite.errors import NotFound, PermissionError_


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str | None  # None when the caller is an API key

    @property
    def manages(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


def tenant_access(*, principal, slug: str) -> TenantAccess:
    """The tenant named in the URL, if the caller belongs to it; else 404 (never 403)."""
    if principal.api_key is not None:
        if principal.tenant is not None and principal.tenant.slug == slug:
            return TenantAccess(principal.tenant, None)
        raise NotFound("Tenant not found.")
    membership = (
        Membership.objects.select_related("tenant")
        .filter(user=principal.user, tenant__slug=slug, tenant__is_active=True)
        .first()
    )
    if membership is None:
        raise NotFound("Tenant not found.")
    return TenantAccess(membership.tenant, membership.role)


def require(
    access: TenantAccess,
    principal,
    *,
    manage: bool = False,
    scope: str | None = None,
    owner: bool = False,
    people_only: bool = False,
) -> None:
    if principal.api_key is not None:
        if people_only or owner:
            raise PermissionError_("This endpoint is for tenant members signed in with a JWT.")
        if scope and not principal.has_scope(scope):
            raise PermissionError_(f"This API key lacks the `{scope}` scope.")
        return
    if owner and access.role != Role.OWNER:
        raise PermissionError_("Only the tenant's owners can do this.")
    if manage and not access.manages:
        raise PermissionError_("Only the tenant's owners and admins can do this.")


def user_tenants(*, user) -> list[dict]:
    return [
        {"slug": m.tenant.slug, "name": m.tenant.name, "role": m.role}
        for m in Membership.objects.select_related("tenant").filter(
            user=user, tenant__is_active=True
        )
    ]


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return (
        ApiKey.objects.for_tenant(tenant)
        .select_related("created_by", "replaced_by")
        .prefetch_related("allowed_models")
    )


def api_key_get(*, tenant: Tenant, prefix: str) -> ApiKey:
    key = api_key_list(tenant=tenant).filter(prefix=prefix).first()
    if key is None:
        raise NotFound("API key not found.")
    return key


def member_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.for_tenant(tenant).select_related("user")


def member_get(*, tenant: Tenant, username: str) -> Membership:
    membership = member_list(tenant=tenant).filter(user__username=username).first()
    if membership is None:
        raise NotFound("Member not found.")
    return membership


def audit_list(*, tenant: Tenant) -> QuerySet[AuditLog]:
    return AuditLog.objects.filter(tenant=tenant)


def tenant_models(*, tenant: Tenant) -> QuerySet:
    """The enabled models `tenant` may use: what a key's allow-list may name.

    inference decides which models those are (LLMSITE_TENANT_MODELS names its query).
    """
    return import_string(settings.LLMSITE_TENANT_MODELS)(tenant=tenant)
