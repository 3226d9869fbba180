"""Who is calling: an API key (`sk-llm-…`) or a person's JWT, both as `Bearer`.

The tenant is resolved here, once, and travels on the request as part of the
principal: the key's tenant, or for a JWT the tenant named by `X-Tenant`
(or the user's only tenant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from django.utils.functional import cached_property
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework_simplejwt.authentication import JWTAuthentication

from accounts.models import ApiKey, Membership, Scope, Tenant
from accounts.services import KEY_PREFIX, Actor, api_key_authenticate, api_key_check
from llmsite.errors import InvalidRequest, PermissionError_

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class Principal:
    tenant: Tenant | None
    api_key: ApiKey | None = None
    user: User | None = None
    role: str | None = None
    ip: str | None = field(default=None, compare=False)
    request_id: str = field(default="", compare=False)
    # Set when a JWT user belongs to several tenants and sent no X-Tenant.
    tenant_ambiguous: bool = False
    # The tenant's AuthGeneration values read while authenticating this request.
    generations: tuple[int, int] | None = field(default=None, compare=False)

    is_authenticated = True
    is_anonymous = False

    @property
    def pk(self):
        return self.user.pk if self.user is not None else None

    @cached_property
    def actor(self) -> Actor:
        return Actor(user=self.user, api_key=self.api_key, ip=self.ip, request_id=self.request_id)

    def has_scope(self, scope: str) -> bool:
        # People act through their role; keys through their scopes.
        return self.api_key is None or scope in (self.api_key.scopes or [])

    def get_username(self) -> str:
        return self.user.get_username() if self.user is not None else ""


def client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _request_id(request) -> str:
    return getattr(request, "request_id", "") or getattr(
        getattr(request, "_request", None), "request_id", ""
    )


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header; expected 'Authorization: Bearer <API key>'."
            )
        if not token.startswith(KEY_PREFIX):
            return None  # a JWT, perhaps: the next class decides
        return self.authenticate_key(request, token)

    def authenticate_key(self, request, token: str):
        key, generations = api_key_check(raw=token, actor_ip=client_ip(request))
        if key is None:
            raise exceptions.AuthenticationFailed(f"Incorrect API key provided: {_redact(token)}.")
        principal = Principal(
            tenant=key.tenant,
            api_key=key,
            ip=client_ip(request),
            request_id=_request_id(request),
            generations=generations,
        )
        return principal, key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class AnthropicApiKeyAuthentication(ApiKeyAuthentication):
    """An API key as `Authorization: Bearer` or as Anthropic's `x-api-key` header
    (the Messages routes). Both at once must be the same key; an `x-api-key` that
    is not an API key is refused, never passed on to the JWT class."""

    def authenticate(self, request):
        raw = request.META.get("HTTP_X_API_KEY", "").strip()
        if not raw:
            return super().authenticate(request)
        bearer = request.META.get("HTTP_AUTHORIZATION", "")
        if bearer and bearer.partition(" ")[2].strip() != raw:
            raise exceptions.AuthenticationFailed(
                "Send one credential: `x-api-key` or `Authorization: Bearer`, not two."
            )
        if not raw.startswith(KEY_PREFIX):
            raise exceptions.AuthenticationFailed(f"Incorrect API key provided: {_redact(raw)}.")
        return self.authenticate_key(request, raw)


class JWTTenantAuthentication(JWTAuthentication):
    """A person's access token; `X-Tenant: <slug>` picks the tenant they act in."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, token = result
        principal = _principal_for_user(
            user,
            request.META.get("HTTP_X_TENANT", "").strip(),
            ip=client_ip(request),
            request_id=_request_id(request),
        )
        return principal, token


class StaffJWTAuthentication(JWTAuthentication):
    """A person's access token for the platform's operator endpoints: no tenant, no keys.

    Permissions (`IsStaff`) decide who gets in; an API key is refused here, by
    its prefix, before any lookup.
    """

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header.partition(" ")[2].strip().startswith(KEY_PREFIX):
            raise exceptions.AuthenticationFailed(
                "Operator endpoints take a staff user's access token, not an API key."
            )
        result = super().authenticate(request)
        if result is None:
            return None
        user, token = result
        principal = Principal(
            tenant=None,
            user=cast("User", user),
            ip=client_ip(request),
            request_id=_request_id(request),
        )
        return principal, token


def principal_from_token(
    token: str, *, tenant_slug: str = "", ip: str | None = None, request_id: str = ""
) -> Principal:
    """Authenticate a bare bearer token (API key or JWT) outside DRF: WebSockets.

    Raises AuthenticationError (401) or PermissionError_ (403), like the REST classes.
    """
    from rest_framework_simplejwt.exceptions import InvalidToken, TokenError

    from llmsite.errors import AuthenticationError

    token = (token or "").strip()
    if not token:
        raise AuthenticationError("No credential: send an API key or an access token.")
    if token.startswith(KEY_PREFIX):
        # No generations on this principal: a socket lives long, and each of its
        # requests must check the caches afresh.
        key = api_key_authenticate(raw=token, actor_ip=ip)
        if key is None:
            raise AuthenticationError(f"Incorrect API key provided: {_redact(token)}.")
        return Principal(tenant=key.tenant, api_key=key, ip=ip, request_id=request_id)
    jwt = JWTTenantAuthentication()
    try:
        user = jwt.get_user(jwt.get_validated_token(token.encode()))
    except (InvalidToken, TokenError, exceptions.AuthenticationFailed) as exc:
        raise AuthenticationError("Invalid or expired token.") from exc
    return _principal_for_user(user, tenant_slug, ip=ip, request_id=request_id)


def _principal_for_user(user, wanted: str, *, ip: str | None, request_id: str) -> Principal:
    memberships = list(
        Membership.objects.select_related("tenant").filter(user=user, tenant__is_active=True)
    )
    chosen = None
    if wanted:
        chosen = next((m for m in memberships if m.tenant.slug == wanted), None)
        if chosen is None:
            raise PermissionError_(f"You are not a member of tenant `{wanted}`.")
    elif len(memberships) == 1:
        chosen = memberships[0]
    return Principal(
        tenant=chosen.tenant if chosen else None,
        user=user,
        role=chosen.role if chosen else None,
        ip=ip,
        request_id=request_id,
        tenant_ambiguous=chosen is None and len(memberships) > 1,
    )


def _redact(token: str) -> str:
    # Never echo a secret back (it ends up in client logs); show its shape only.
    if len(token) <= 10:
        return "***"
    return f"{token[:7]}***{token[-4:]}"


def principal_check_inference(
    principal: Principal,
    *,
    tenant_param: str = "X-Tenant",
    tenant_hint: str = "the X-Tenant header",
) -> None:
    """Raise the APIError that keeps `principal` from inference, if any: it needs a
    resolved tenant and, for a key, the `inference` scope.

    One rule for every client API: REST (CanInfer) and the WebSocket consumer,
    which names where its tenant goes with `tenant_param` and `tenant_hint`.
    """
    if principal.tenant is None:
        if principal.tenant_ambiguous:
            raise InvalidRequest(
                f"You belong to several tenants: name one in {tenant_hint}.",
                param=tenant_param,
                code="tenant_required",
            )
        raise PermissionError_("You are not a member of any tenant.")
    if not principal.has_scope(Scope.INFERENCE):
        raise PermissionError_("This API key lacks the `inference` scope.")


class CanInfer(permissions.BasePermission):
    """For /v1: principal_check_inference, after authentication."""

    def has_permission(self, request, view) -> bool:
        principal = request.user
        if not getattr(principal, "is_authenticated", False):
            return False
        principal_check_inference(principal)
        return True


class IsStaff(permissions.BasePermission):
    """A signed-in staff user (Django's `is_staff`): operators of the whole platform."""

    message = "Operator endpoints are for staff users only."

    def has_permission(self, request, view) -> bool:
        user = getattr(request.user, "user", None)
        return bool(user is not None and user.is_active and user.is_staff)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "API key: `sk-llm-...`"}


class JWTTenantAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.JWTTenantAuthentication"
    name = "JWTAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Access token from /api/auth/token/; X-Tenant picks the tenant.",
        }


class StaffJWTAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.StaffJWTAuthentication"
    name = "StaffJWTAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Access token of a staff user, from /api/auth/token/.",
        }


class AnthropicApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.AnthropicApiKeyAuthentication"
    name = "AnthropicApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "API key `sk-llm-...` in `x-api-key` (or as `Authorization: Bearer`).",
        }
