"""Bearer API-key authentication: the tenant is resolved here, once, and travels on the request."""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.models import ApiKey, Tenant
from accounts.services import api_key_authenticate


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, through an API key (JWT users arrive in a later issue)."""

    tenant: Tenant
    api_key: ApiKey | None = None

    is_authenticated = True
    is_anonymous = False

    @property
    def pk(self):
        return self.api_key.pk if self.api_key else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

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
        key = api_key_authenticate(raw=token)
        if key is None:
            raise exceptions.AuthenticationFailed(f"Incorrect API key provided: {_redact(token)}.")
        principal = Principal(tenant=key.tenant, api_key=key)
        request._request.tenant = key.tenant
        return principal, key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def _redact(token: str) -> str:
    # Never echo a secret back (it ends up in client logs); show its shape only.
    if len(token) <= 10:
        return "***"
    return f"{token[:7]}***{token[-4:]}"


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "API key: `sk-llm-...`"}
