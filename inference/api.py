"""The OpenAI-compatible REST endpoints. Thin: validate, call a service, render."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework.response import Response

from accounts.authentication import CanInfer
from inference import extras, router, seed_api, selectors, services
from inference.accounting import Accounting
from inference.serializers import (
    AnalyzeRequestSerializer,
    BatchRequestSerializer,
    ChatCompletionRequestSerializer,
    CompareRequestSerializer,
    CompletionRequestSerializer,
    EmbeddingRequestSerializer,
)
from llmsite.drf import AsyncAPIView
from llmsite.errors import ModelNotFound

ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid request (OpenAI error object)"),
    401: OpenApiResponse(OpenApiTypes.OBJECT, description="Missing or invalid API key"),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="Model not found"),
    413: OpenApiResponse(OpenApiTypes.OBJECT, description="Request body too large"),
    503: OpenApiResponse(OpenApiTypes.OBJECT, description="Model loading or unavailable"),
}


def _model_object(model) -> dict:
    return {
        "id": model.model_id,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owned_by,
    }


def _alias_object(alias) -> dict:
    return {
        "id": alias.name,
        "object": "model",
        "created": int(alias.created_at.timestamp()),
        "owned_by": "llmsite-router",
    }


def _model_and_alias_list(*, tenant, api_key) -> list[dict]:
    models = selectors.model_list(tenant=tenant, api_key=api_key)
    aliases = router.alias_list(tenant=tenant, api_key=api_key)
    return [_model_object(m) for m in models] + [_alias_object(a) for a in aliases]


def _model_or_alias(*, tenant, api_key, model_id: str) -> dict:
    try:
        return _model_object(selectors.model_get(tenant=tenant, api_key=api_key, model_id=model_id))
    except ModelNotFound:
        for alias in router.alias_list(tenant=tenant, api_key=api_key):
            if alias.name == model_id:
                return _alias_object(alias)
        raise


def _validated(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def sse_frames(chunks) -> AsyncIterator[bytes]:
    """One `data:` event per chunk, then `data: [DONE]` unless the stream failed."""
    failed = False
    try:
        async for chunk in chunks:
            failed = "error" in chunk
            yield _sse(chunk)
        if not failed:
            yield _sse("[DONE]")
    finally:
        # Closing the outer generator (a client that left) must close the
        # service's stream now, so its `finally` frees the engine and bills.
        await chunks.aclose()


def _respond(result) -> Response | StreamingHttpResponse:
    if isinstance(result, dict):
        return Response(result)
    response = StreamingHttpResponse(sse_frames(result), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class InferenceView(AsyncAPIView):
    """Every /v1 request after authentication leaves exactly one usage record and
    carries the caller's x-ratelimit-* headers."""

    permission_classes = [CanInfer]
    endpoint = ""
    acct: Accounting | None = None

    def start_accounting(self, request) -> Accounting:
        try:
            data = request.data if isinstance(request.data, dict) else {}
        except Exception:  # unparseable body: the handler reports it
            data = {}
        user = data.get("user")
        self.acct = Accounting(
            principal=request.user,
            endpoint=self.endpoint,
            request_id=request._request.request_id,
            end_user=user[:256] if isinstance(user, str) else "",
            model_id=str(data.get("model", ""))[:128],
        )
        return self.acct

    async def dispatch(self, request, *args, **kwargs):
        response = await super().dispatch(request, *args, **kwargs)
        acct = self.acct
        if acct is None:
            return response  # not authenticated: nobody to account to
        if not acct.written and not acct.deferred:
            if response.status_code >= 400:
                error = getattr(response, "data", None) or {}
                acct.status = "rejected" if response.status_code == 429 else "error"
                acct.error_code = str((error.get("error") or {}).get("code") or "")
            await acct.write()
        for name, value in acct.rate_headers().items():
            response[name] = value
        for name, value in acct.headers.items():
            response[name] = value
        return response


class ModelListView(InferenceView):
    endpoint = "models"

    @extend_schema(
        operation_id="listModels",
        tags=["Models"],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 401: ERRORS[401]},
        examples=[
            OpenApiExample(
                "models",
                response_only=True,
                value={
                    "object": "list",
                    "data": [
                        {
                            "id": "gemma-3-270m",
                            "object": "model",
                            "created": 1767225600,
                            "owned_by": "llmsite",
                        }
                    ],
                },
            )
        ],
    )
    async def get(self, request):
        acct = self.start_accounting(request)
        await acct.reserve(model=None, max_completion_tokens=0)
        data = await sync_to_async(_model_and_alias_list)(
            tenant=request.user.tenant, api_key=request.user.api_key
        )
        return Response({"object": "list", "data": data})


class ModelDetailView(InferenceView):
    endpoint = "models"

    @extend_schema(
        operation_id="retrieveModel",
        tags=["Models"],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 401: ERRORS[401], 404: ERRORS[404]},
    )
    async def get(self, request, model_id: str):
        acct = self.start_accounting(request)
        acct.model_id = model_id[:128]
        await acct.reserve(model=None, max_completion_tokens=0)
        body = await sync_to_async(_model_or_alias)(
            tenant=request.user.tenant, api_key=request.user.api_key, model_id=model_id
        )
        return Response(body)


class CompletionView(InferenceView):
    endpoint = "completions"

    @extend_schema(
        operation_id="createCompletion",
        tags=["Completions"],
        request=CompletionRequestSerializer,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), **ERRORS},
        examples=[
            OpenApiExample(
                "completion",
                request_only=True,
                value={
                    "model": "gemma-3-270m",
                    "prompt": "The capital of France is",
                    "max_tokens": 8,
                    "temperature": 0,
                },
            ),
            *seed_api.COMPLETION_EXAMPLES,
        ],
        description=(
            "Text completion. With `stream: true` the response is `text/event-stream`. "
            "Without `model` it is routed as `auto` (an llmsite extension)."
        ),
    )
    async def post(self, request):
        acct = self.start_accounting(request)
        data = _validated(CompletionRequestSerializer, request)
        return _respond(
            await services.completion_create(principal=request.user, data=data, acct=acct)
        )


class ChatCompletionView(InferenceView):
    endpoint = "chat.completions"

    @extend_schema(
        operation_id="createChatCompletion",
        tags=["Chat"],
        request=ChatCompletionRequestSerializer,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), **ERRORS},
        examples=[
            OpenApiExample(
                "chat",
                request_only=True,
                value={
                    "model": "gemma-3-270m",
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "max_tokens": 16,
                },
            ),
            *seed_api.CHAT_EXAMPLES,
        ],
        description=(
            "Chat completion. With `stream: true` the response is `text/event-stream`. "
            "Without `model` it is routed as `auto` (an llmsite extension)."
        ),
    )
    async def post(self, request):
        acct = self.start_accounting(request)
        data = _validated(ChatCompletionRequestSerializer, request)
        return _respond(
            await services.chat_completion_create(principal=request.user, data=data, acct=acct)
        )


class EmbeddingView(InferenceView):
    endpoint = "embeddings"

    @extend_schema(
        operation_id="createEmbedding",
        tags=["Embeddings"],
        request=EmbeddingRequestSerializer,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), **ERRORS},
        examples=[
            OpenApiExample(
                "embedding",
                request_only=True,
                value={"model": "gemma-3-270m", "input": ["first text", "second text"]},
            )
        ],
    )
    async def post(self, request):
        acct = self.start_accounting(request)
        data = _validated(EmbeddingRequestSerializer, request)
        return Response(
            await services.embedding_create(principal=request.user, data=data, acct=acct)
        )


# -- /v1/batch, /v1/compare, /v1/analyze ---------------------------------------------------
class FanOutView(InferenceView):
    """A request made of several /v1 requests, each accounted on its own.

    Authentication, permissions and a refused envelope (invalid body: one
    record, like any refused request) go through InferenceView. Once the body
    is valid, the view drops its own accounting: each item reserves quota and
    writes its record, and the envelope adds neither a record nor a unit of
    RPM. The response carries the x-ratelimit-* of the tightest item.
    """

    request_serializer: type | None = None  # set by subclasses
    service = None

    async def post(self, request):
        self.start_accounting(request)
        data = _validated(self.request_serializer, request)
        self.acct = None  # from here on, the items account for themselves
        outcome = await self.service(
            principal=request.user, data=data, request_id=request._request.request_id
        )
        return Response(self.render(request, outcome.body), headers=outcome.headers)

    def render(self, request, body: dict) -> dict:
        """The answer's body; subclasses answer a body in the seed system's form in its shape."""
        return body


BATCH_EXAMPLE = {
    "requests": [
        {
            "custom_id": "greet",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gemma-3-270m",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            },
        },
        {
            "custom_id": "vec",
            "url": "/v1/embeddings",
            "body": {"model": "gemma-3-270m", "input": "hello"},
        },
    ],
    "concurrency": 2,
}


class BatchView(FanOutView):
    endpoint = "batch"
    request_serializer = BatchRequestSerializer
    service = staticmethod(extras.batch_run)

    @extend_schema(
        operation_id="createBatch",
        tags=["Batch"],
        request=BatchRequestSerializer,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 401: ERRORS[401], 400: ERRORS[400]},
        examples=[
            OpenApiExample("batch", request_only=True, value=BATCH_EXAMPLE),
            *seed_api.BATCH_EXAMPLES,
        ],
        description=(
            "Up to `LLMSITE_BATCH_MAX` chat, completion or embedding requests in one call, run "
            "concurrently (at most `concurrency` at a time, and within the tenant's concurrency "
            "limit). Each item is its own request for quotas and billing: it succeeds "
            "(`status_code` 200 and `response`) or fails (`status_code` and an OpenAI `error`) "
            "on its own; an invalid item is that item's 400. `stream` is refused per item. "
            "Results keep the request order; `totals` sums them. Items in LLM-Runner-Router's "
            "form (`{prompt, max_tokens, temperature, ...}`, all of them) run as completions and "
            'get its answer: `{object: "batch", results, total, successful, failed}`.'
        ),
    )
    async def post(self, request):
        return await super().post(request)

    def render(self, request, body: dict) -> dict:
        return seed_api.batch_to_seed(body) if seed_api.batch_is_seed(request.data) else body


class CompareView(FanOutView):
    endpoint = "compare"
    request_serializer = CompareRequestSerializer
    service = staticmethod(extras.compare_run)

    @extend_schema(
        operation_id="createComparison",
        tags=["Compare"],
        request=CompareRequestSerializer,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), 401: ERRORS[401], 400: ERRORS[400]},
        examples=[
            OpenApiExample(
                "compare",
                request_only=True,
                value={
                    "models": ["gemma-3-270m", "auto"],
                    "prompt": "The capital of France is",
                    "max_tokens": 8,
                    "temperature": 0,
                },
            ),
            *seed_api.COMPARE_EXAMPLES,
        ],
        description=(
            "One prompt (a completion) or one conversation (`messages`, a chat) on 2 to 8 "
            "models or aliases at once. Each entry gives the model asked, the model that "
            "answered, the text, `latency_ms`, `ttft_ms`, `usage` and `tokens_per_second`, or "
            "an OpenAI `error` (404 for an unknown model). 200 whenever the body is valid. A body "
            "with `options` (LLM-Runner-Router's form: the sampling parameters for every model) "
            'gets its answer: `{object: "comparison", prompt, models, results, request_id}`.'
        ),
    )
    async def post(self, request):
        return await super().post(request)

    def render(self, request, body: dict) -> dict:
        if not seed_api.compare_is_seed(request.data):
            return body
        return seed_api.compare_to_seed(
            body, request=request.data, request_id=request._request.request_id
        )


class AnalyzeView(InferenceView):
    endpoint = "analyze"

    @extend_schema(
        operation_id="createAnalysis",
        tags=["Analyze"],
        request=AnalyzeRequestSerializer,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT), **ERRORS},
        examples=[
            OpenApiExample(
                "analyze",
                request_only=True,
                value={"text": "The service was quick and friendly.", "tasks": ["sentiment"]},
            ),
            *seed_api.ANALYZE_EXAMPLES,
        ],
        description=(
            "Sentiment (`label` positive/negative/neutral and `score` 0..1), `keywords` and a "
            "`summary` of a text, from one JSON-schema-constrained chat completion on the "
            "router (`model` defaults to `auto`). The answer always parses. `analysis_types` is "
            "LLM-Runner-Router's name for `tasks`; every answer also carries its `text` (the "
            "first 100 characters), `results` (`sentiment` the plain label, `sentiment_score` "
            "beside it) and `request_id`."
        ),
    )
    async def post(self, request):
        acct = self.start_accounting(request)
        data = _validated(AnalyzeRequestSerializer, request)
        result = await extras.text_analyze(principal=request.user, data=data, acct=acct)
        return Response(
            seed_api.analysis_with_seed_fields(
                result, text=data["text"], request_id=request._request.request_id
            )
        )
