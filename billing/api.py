"""Usage and statements over REST, for a tenant's members and `usage:read` keys."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import renderers, serializers
from rest_framework.response import Response

from accounts.api import TENANT_PARAM, TenantScopedViewSet
from accounts.models import Scope
from accounts.selectors import require
from billing import selectors
from billing.models import Statement, StatementLine
from llmsite.errors import InvalidRequest


class CSVRenderer(renderers.BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if not isinstance(data, list):  # an error object
            return json.dumps(data).encode()
        out = io.StringIO()
        if data:
            writer = csv.DictWriter(out, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
        return out.getvalue().encode()


def _day(value: str | None, name: str, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date like 2026-01-31.", param=name) from None


class StatementLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = StatementLine
        fields = ["model_id", "requests", "prompt_tokens", "completion_tokens", "cost"]


class StatementSerializer(serializers.ModelSerializer):
    month = serializers.DateField(format="%Y-%m")
    lines = StatementLineSerializer(many=True, read_only=True)

    class Meta:
        model = Statement
        fields = [
            "month",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total",
            "closed_at",
            "lines",
        ]


@extend_schema(tags=["Usage"])
class UsageViewSet(TenantScopedViewSet):
    renderer_classes = [renderers.JSONRenderer, CSVRenderer]

    @extend_schema(
        parameters=[
            TENANT_PARAM,
            OpenApiParameter("start", OpenApiTypes.DATE, description="first day (UTC), incl."),
            OpenApiParameter("end", OpenApiTypes.DATE, description="last day (UTC), excl."),
            OpenApiParameter("group_by", str, enum=["day", "model", "key"]),
            OpenApiParameter("format", str, enum=["json", "csv"]),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def list(self, request, slug):
        require(self.access, request.user, scope=Scope.USAGE_READ)
        today = datetime.now(UTC).date()
        start = _day(request.query_params.get("start"), "start", today.replace(day=1))
        end = _day(request.query_params.get("end"), "end", today + timedelta(days=1))
        group_by = request.query_params.get("group_by", "day")
        if group_by not in selectors.GROUPS:
            raise InvalidRequest("group_by must be day, model or key.", param="group_by")
        if end <= start or (end - start).days > 731:
            raise InvalidRequest("The range must be 1 to 731 days long.", param="end")
        rows = selectors.usage_summary(tenant=self.tenant, start=start, end=end, group_by=group_by)
        if getattr(request.accepted_renderer, "format", "") == "csv":
            return Response(rows)
        return Response(
            {"object": "list", "start": start, "end": end, "group_by": group_by, "data": rows}
        )


@extend_schema(tags=["Usage"], parameters=[TENANT_PARAM])
class StatementViewSet(TenantScopedViewSet):
    serializer_class = StatementSerializer
    lookup_field = "month"
    lookup_value_regex = r"\d{4}-\d{2}"

    def list(self, request, slug):
        require(self.access, request.user, scope=Scope.USAGE_READ)
        statements = selectors.statement_list(tenant=self.tenant)
        return Response(StatementSerializer(statements, many=True).data)

    def retrieve(self, request, slug, month):
        require(self.access, request.user, scope=Scope.USAGE_READ)
        try:
            first = date.fromisoformat(f"{month}-01")
        except ValueError:
            raise InvalidRequest(
                f"{month!r} is not a month: use YYYY-MM (01 to 12).", param="month"
            ) from None
        statement = selectors.statement_get(tenant=self.tenant, month=first)
        return Response(StatementSerializer(statement).data)


@extend_schema(exclude=True)
class UsageNoSlashViewSet(UsageViewSet):
    """`/usage` without the trailing slash, as the API is documented; same view."""
