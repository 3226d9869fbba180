"""Operator endpoints: the readiness probe, Prometheus `/metrics`, and staff-only
stats and model loading.

Not tenant-scoped: they speak for this process and the platform's models.
Models are loaded per process (see inference.model_admin), so under several
daphne processes each call acts on the process that handles it.

The views are synchronous on purpose: under ASGI each request's sync code runs
in that request's own thread, so waiting for a model to load blocks no one else.
"""

from __future__ import annotations

import hmac
import ipaddress

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import IsStaff, StaffJWTAuthentication, client_ip
from inference import seed_api, telemetry
from inference.model_admin import ModelState, model_load, model_reload, model_unload
from inference.models import LLMModel
from inference.registry import registry
from llmsite import prometheus
from llmsite.errors import (
    AuthenticationError,
    ModelNotFound,
    PermissionError_,
    ServiceUnavailable,
    error_response,
)

TAGS = ["Operators"]
# How long a load waits for the model before answering 202 (the admin waits as long).
LOAD_WAIT_SECONDS = 10.0
MAX_LOAD_WAIT_SECONDS = 120.0

_ERROR = OpenApiTypes.OBJECT
STAFF_ERRORS = {
    401: OpenApiResponse(_ERROR, description="No token, a bad one, or an API key"),
    403: OpenApiResponse(_ERROR, description="The user is not staff"),
}
MODEL_ID = OpenApiParameter(
    "model_id", str, OpenApiParameter.PATH, description="The model's id (`model_id`)"
)


# -- /ready ------------------------------------------------------------------------
def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


async def ready(request):
    """200 once the database answers and the default model is loaded here, else 503."""
    db_ok = await sync_to_async(_database_ok)()
    model_ok = registry.get_loaded(settings.LLMSITE_DEFAULT_MODEL) is not None
    if db_ok and model_ok:
        return JsonResponse({"status": "ready", "database": "ok", "models": registry.loaded_ids()})
    reasons = []
    if not db_ok:
        reasons.append("the database does not answer")
    if not model_ok:
        reasons.append(f"the default model `{settings.LLMSITE_DEFAULT_MODEL}` is not loaded")
    return error_response(
        ServiceUnavailable(f"Not ready: {'; '.join(reasons)}.", headers={"Retry-After": "5"})
    )


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
        body, content_type = prometheus.render()
        return HttpResponse(body, content_type=content_type)


# -- staff endpoints --------------------------------------------------------------
class ModelStatusSerializer(serializers.Serializer):
    id = serializers.CharField()
    backend = serializers.CharField(help_text="`llama_cpp` (local) or `openai` (remote)")
    state = serializers.CharField(help_text="loaded, loading, failed, unloaded or remote")
    error = serializers.CharField(help_text="Why loading failed, when it did")
    loaded = serializers.BooleanField()
    queue_depth = serializers.IntegerField(help_text="Jobs waiting on the local engine")
    engine_in_flight = serializers.IntegerField(help_text="Jobs the local engine runs now")
    in_flight = serializers.IntegerField(help_text="Requests holding this backend (router)")
    requests = serializers.IntegerField(help_text="Requests the router sent it")
    # The API's field name; it shadows Serializer.errors, never used on these.
    errors = serializers.IntegerField(help_text="Of which failed")  # type: ignore[assignment]
    ttft_ms = serializers.FloatField(allow_null=True, help_text="Time to first token, EWMA")
    tokens_per_s = serializers.FloatField(allow_null=True, help_text="Decode speed, EWMA")
    memory_bytes = serializers.IntegerField(
        allow_null=True, help_text="Size of the loaded GGUF file"
    )
    engine_stats = serializers.DictField(
        child=serializers.FloatField(), help_text="The engine's own counters, when it has any"
    )


class StatsSerializer(serializers.Serializer):
    object = serializers.CharField()
    started_at = serializers.FloatField(help_text="Unix time this process started")
    uptime_s = serializers.FloatField()
    requests = serializers.IntegerField(help_text="/v1 calls (one per usage record)")
    errors = serializers.IntegerField(help_text="/v1 calls that failed")  # type: ignore[assignment]
    rejected = serializers.IntegerField(help_text="/v1 calls refused by a limit or quota")
    cancelled = serializers.IntegerField(help_text="/v1 calls the client left")
    http_requests = serializers.IntegerField(help_text="HTTP responses of any route")
    http_errors = serializers.IntegerField(help_text="HTTP 5xx responses")
    models_loaded = serializers.IntegerField()
    models = ModelStatusSerializer(many=True, help_text="Every enabled model")
    # LLM-Runner-Router's admin stats, under its names (see inference.seed_api).
    server = serializers.DictField(
        help_text="LLM-Runner-Router's `server`: uptime (s), requests, errors, "
        "memory {rss, maxRss} (bytes), cpu {user, system} (microseconds)"
    )
    router = serializers.DictField(
        help_text="LLM-Runner-Router's `router`: initialized, engine, strategy, modelsLoaded"
    )
    metrics = serializers.DictField(help_text="The request counters above, together")


class LoadQuerySerializer(serializers.Serializer):
    wait = serializers.FloatField(
        required=False,
        default=LOAD_WAIT_SECONDS,
        min_value=0,
        max_value=MAX_LOAD_WAIT_SECONDS,
        help_text="Seconds to wait for the model before answering 202",
    )


class StaffView(APIView):
    authentication_classes = [StaffJWTAuthentication]
    permission_classes = [IsStaff]


class CanManageEngine(IsStaff):
    """Staff holding inference.manage_engine: loading and unloading affect every tenant."""

    message = "Loading and unloading models needs the inference.manage_engine permission."

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and request.user.user.has_perm(
            "inference.manage_engine"
        )


class EngineView(StaffView):
    permission_classes = [CanManageEngine]


def _model(model_id: str) -> LLMModel:
    # Operators see every row, enabled or not, whatever the tenants' lists say.
    model = LLMModel.objects.filter(model_id=model_id).first()
    if model is None:
        raise ModelNotFound(model_id)
    return model


def _state_response(model: LLMModel, state: ModelState) -> Response:
    if state.state == "failed":
        raise ServiceUnavailable(
            f"`{model.model_id}` failed to load: {state.error}", code="model_load_failed"
        )
    body = telemetry.model_status(model=model)
    return Response(body, status=200 if body["loaded"] else 202)


class StatsView(StaffView):
    @extend_schema(
        operation_id="getOperatorStats",
        tags=TAGS,
        responses={200: StatsSerializer, **STAFF_ERRORS},
        description="Uptime, request totals and every enabled model, in this process.",
    )
    def get(self, request):
        stats = telemetry.operator_stats()
        return Response(
            seed_api.stats_with_seed_fields(stats, strategy=settings.LLMSITE_ROUTER_STRATEGY)
        )


LOAD_RESPONSES = {
    200: OpenApiResponse(ModelStatusSerializer, description="Loaded"),
    202: OpenApiResponse(ModelStatusSerializer, description="Still loading"),
    400: OpenApiResponse(_ERROR, description="The model is disabled, or remote"),
    **STAFF_ERRORS,
    404: OpenApiResponse(_ERROR, description="Unknown model"),
    503: OpenApiResponse(_ERROR, description="Loading failed (or no room in the memory budget)"),
}


class ModelLoadView(EngineView):
    @extend_schema(
        operation_id="loadModel",
        tags=TAGS,
        request=None,
        parameters=[MODEL_ID, LoadQuerySerializer],
        responses=LOAD_RESPONSES,
        description="Load a model in this process, waiting up to `wait` seconds for it.",
    )
    def post(self, request, model_id: str):
        query = LoadQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        model = _model(model_id)
        state = model_load(model=model, actor=request.user.actor, wait=query.validated_data["wait"])
        return _state_response(model, state)


class ModelReloadView(EngineView):
    @extend_schema(
        operation_id="reloadModel",
        tags=TAGS,
        request=None,
        parameters=[MODEL_ID, LoadQuerySerializer],
        responses=LOAD_RESPONSES,
        description="Unload a model once its queued requests finish, then load it again.",
    )
    def post(self, request, model_id: str):
        query = LoadQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        model = _model(model_id)
        state = model_reload(
            model=model, actor=request.user.actor, wait=query.validated_data["wait"]
        )
        return _state_response(model, state)


class ModelUnloadView(EngineView):
    @extend_schema(
        operation_id="unloadModel",
        tags=TAGS,
        request=None,
        parameters=[MODEL_ID],
        responses={
            200: ModelStatusSerializer,
            **STAFF_ERRORS,
            404: OpenApiResponse(_ERROR, description="Unknown model"),
        },
        description="Unload a model from this process once its queued requests finish.",
    )
    def post(self, request, model_id: str):
        model = _model(model_id)
        model_unload(model=model, actor=request.user.actor)
        return Response(telemetry.model_status(model=model))
