"""Tenant management over REST: sign-in (JWT), keys, members, audit. Views stay thin."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from django.db.models import Model
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenObtainPairView

from accounts import selectors, services
from accounts.authentication import Principal
from accounts.models import Scope
from accounts.serializers import (
    ApiKeyCreateSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ApiKeyWithSecretSerializer,
    AuditLogSerializer,
    LogoutSerializer,
    MemberAddSerializer,
    MemberRoleSerializer,
    MembershipSerializer,
    TenantSerializer,
)
from accounts.services import Actor
from accounts.throttling import login_throttled
from llmsite.errors import InvalidRequest, RateLimited

TENANT_PARAM = OpenApiParameter("slug", str, OpenApiParameter.PATH, description="Tenant slug")


# -- sign-in ---------------------------------------------------------------------------
class LoginView(TokenObtainPairView):
    """Username and password in, an access and a refresh token out. Rate-limited."""

    @extend_schema(
        tags=["Auth"],
        examples=[
            OpenApiExample("login", request_only=True, value={"username": "alice", "password": "…"})
        ],
    )
    def post(self, request, *args, **kwargs):
        if not isinstance(request.data, dict):
            raise InvalidRequest("The body must be a JSON object with username and password.")
        if login_throttled(request._request, username=request.data.get("username", "")):
            raise RateLimited(
                "Too many sign-in attempts; wait a minute and try again.",
                headers={"Retry-After": "60"},
            )
        return super().post(request, *args, **kwargs)


class LogoutView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(tags=["Auth"], request=LogoutSerializer, responses={204: None})
    def post(self, request):
        serializer = LogoutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            RefreshToken(serializer.validated_data["refresh"]).blacklist()
        except TokenError as exc:
            raise InvalidRequest(
                "The refresh token is invalid or expired.", param="refresh"
            ) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


class TenantListView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(tags=["Tenants"], responses=TenantSerializer(many=True))
    def get(self, request):
        principal = request.user
        if principal.api_key is not None:
            rows = [{"slug": principal.tenant.slug, "name": principal.tenant.name, "role": None}]
        else:
            rows = selectors.user_tenants(user=principal.user)
        return Response(TenantSerializer(rows, many=True).data)


# -- tenant-scoped viewsets -----------------------------------------------------------
class TenantScopedViewSet(viewsets.GenericViewSet):
    permission_classes = [IsAuthenticated]
    lookup_value_regex = r"[^/]+"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.access = selectors.tenant_access(principal=request.user, slug=kwargs["slug"])

    @property
    def tenant(self):
        return self.access.tenant

    @property
    def actor(self) -> Actor:
        principal: Principal = self.request.user  # type: ignore[assignment]  # our auth classes
        return principal.actor


@extend_schema(tags=["API keys"], parameters=[TENANT_PARAM])
class ApiKeyViewSet(TenantScopedViewSet):
    serializer_class = ApiKeySerializer
    lookup_field = "prefix"

    def get_queryset(self):
        return selectors.api_key_list(tenant=self.tenant)

    def _read(self):
        selectors.require(self.access, self.request.user, scope=Scope.KEYS_MANAGE)

    def _manage(self):
        selectors.require(self.access, self.request.user, manage=True, scope=Scope.KEYS_MANAGE)

    def list(self, request, slug):
        self._read()
        return Response(ApiKeySerializer(self.get_queryset(), many=True).data)

    def retrieve(self, request, slug, prefix):
        self._read()
        key = selectors.api_key_get(tenant=self.tenant, prefix=prefix)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyWithSecretSerializer},
        examples=[
            OpenApiExample(
                "create",
                request_only=True,
                value={"name": "ci", "scopes": ["inference"], "allowed_models": ["gemma-3-270m"]},
            )
        ],
    )
    def create(self, request, slug):
        self._manage()
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, raw = services.api_key_issue(
            tenant=self.tenant,
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data["expires_at"],
            allowed_models=self._models(data["allowed_models"]),
            actor=self.actor,
        )
        body = ApiKeyWithSecretSerializer(key, context={"raw_key": raw}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, slug, prefix):
        self._manage()
        key = selectors.api_key_get(tenant=self.tenant, prefix=prefix)
        services.api_key_revoke(api_key=key, actor=self.actor)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        request=ApiKeyRotateSerializer,
        responses={201: ApiKeyWithSecretSerializer},
        examples=[OpenApiExample("rotate", request_only=True, value={"grace_seconds": 3600})],
    )
    @action(detail=True, methods=["post"])
    def rotate(self, request, slug, prefix):
        from datetime import timedelta

        self._manage()
        serializer = ApiKeyRotateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = selectors.api_key_get(tenant=self.tenant, prefix=prefix)
        new_key, raw = services.api_key_rotate(
            api_key=key,
            grace=timedelta(seconds=serializer.validated_data["grace_seconds"]),
            actor=self.actor,
        )
        body = ApiKeyWithSecretSerializer(new_key, context={"raw_key": raw}).data
        return Response(body, status=status.HTTP_201_CREATED)

    def _models(self, model_ids: Sequence[str]) -> builtins.list[Model]:
        if not model_ids:
            return []
        usable = selectors.tenant_models(tenant=self.tenant)
        found = {m.model_id: m for m in usable.filter(model_id__in=model_ids)}
        missing = [mid for mid in model_ids if mid not in found]
        if missing:
            raise InvalidRequest(
                f"Unknown model(s) for this tenant: {', '.join(missing)}.",
                param="allowed_models",
                code="model_not_found",
            )
        return list(found.values())


@extend_schema(tags=["Members"], parameters=[TENANT_PARAM])
class MemberViewSet(TenantScopedViewSet):
    serializer_class = MembershipSerializer
    lookup_field = "username"

    def get_queryset(self):
        return selectors.member_list(tenant=self.tenant)

    def list(self, request, slug):
        selectors.require(self.access, request.user, people_only=True)
        return Response(MembershipSerializer(self.get_queryset(), many=True).data)

    def retrieve(self, request, slug, username):
        selectors.require(self.access, request.user, people_only=True)
        membership = selectors.member_get(tenant=self.tenant, username=username)
        return Response(MembershipSerializer(membership).data)

    @extend_schema(
        request=MemberAddSerializer,
        responses={201: MembershipSerializer},
        description=(
            "Add a new user (created without a password), or an existing one who "
            "belongs to no tenant and is not staff."
        ),
        examples=[
            OpenApiExample("add", request_only=True, value={"username": "bob", "role": "member"})
        ],
    )
    def create(self, request, slug):
        selectors.require(self.access, request.user, manage=True, people_only=True)
        serializer = MemberAddSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        membership = services.member_invite(
            tenant=self.tenant,
            username=data["username"],
            email=data["email"],
            role=data["role"],
            actor=self.actor,
            acting_role=self.access.role,
        )
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=MemberRoleSerializer, responses=MembershipSerializer)
    def partial_update(self, request, slug, username):
        selectors.require(self.access, request.user, manage=True, people_only=True)
        serializer = MemberRoleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = selectors.member_get(tenant=self.tenant, username=username)
        membership = services.member_change_role(
            membership=membership,
            role=serializer.validated_data["role"],
            actor=self.actor,
            acting_role=self.access.role,
        )
        return Response(MembershipSerializer(membership).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, slug, username):
        selectors.require(self.access, request.user, manage=True, people_only=True)
        membership = selectors.member_get(tenant=self.tenant, username=username)
        services.member_remove(
            membership=membership, actor=self.actor, acting_role=self.access.role
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditPagination(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


@extend_schema(tags=["Audit"], parameters=[TENANT_PARAM])
class AuditViewSet(TenantScopedViewSet):
    serializer_class = AuditLogSerializer
    pagination_class = AuditPagination

    def get_queryset(self):
        return selectors.audit_list(tenant=self.tenant)

    def list(self, request, slug):
        selectors.require(self.access, request.user, owner=True)
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(AuditLogSerializer(page, many=True).data)
