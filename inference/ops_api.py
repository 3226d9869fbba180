"""Operator endpoints: Prometheus `/metrics`."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.views import APIView

from accounts.authentication import client_ip
from inference import metrics
from llmsite.errors import (
    AuthenticationError,
    PermissionError_,
)

TAGS = ["Operators"]
_ERROR = OpenApiTypes.OBJECT


# -- /metrics ---------------------------------------------------------------------
def ip_allowed(ip: str | None, networks) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return any(address in net or (mapped is not None and mapped in net) for net in networks)


class MetricsAccess(permissions.BasePermission):
    """The metrics token (when one is set), or a client address in the allow-list.

    A token that is sent must be right, even from an allowed address: a scraper
    with a stale token should fail loudly rather than pass on its address.
    """

    def has_permission(self, request, view) -> bool:
        token = settings.LLMSITE_METRICS_TOKEN
        scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        presented = presented.strip()
        if token and presented:
            if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.encode(), token.encode()
            ):
                return True
            raise AuthenticationError("Incorrect metrics token.", code="invalid_token")
        if ip_allowed(client_ip(request), settings.LLMSITE_METRICS_ALLOW_IPS):
            return True
        raise PermissionError_(
            "Metrics are readable from allowed addresses or with the metrics token."
        )


class _FirstRenderer(BaseContentNegotiation):
    # Scrapers ask for text formats; errors are JSON whatever they accept.
    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class MetricsView(APIView):
    authentication_classes: list = []
    permission_classes = [MetricsAccess]
    content_negotiation_class = _FirstRenderer

    @extend_schema(
        operation_id="getMetrics",
        tags=TAGS,
        auth=[],
        responses={
            (200, "text/plain"): OpenApiResponse(
                OpenApiTypes.STR, description="Prometheus text exposition format 0.0.4"
            ),
            401: OpenApiResponse(_ERROR, description="Wrong metrics token"),
            403: OpenApiResponse(_ERROR, description="Address not allowed and no token"),
        },
        description=(
            "This process's metrics in Prometheus text format. Readable with "
            "`Authorization: Bearer <LLMSITE_METRICS_TOKEN>` or from an address in "
            "`LLMSITE_METRICS_ALLOW_IPS` (loopback by default)."
        ),
    )
    def get(self, request):
        body, content_type = metrics.render()
        return HttpResponse(body, content_type=content_type)
