"""The OpenAI-compatible REST endpoints. Thin: validate, call a service, render."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.response import Response

from accounts.authentication import CanInfer
from inference import extras, openapi, seed_api, services
from inference.openapi import ERRORS
from inference.serializers import (
    AnalyzeRequestSerializer,
    BatchRequestSerializer,
    ChatCompletionRequestSerializer,
    CompareRequestSerializer,
    CompletionRequestSerializer,
    EmbeddingRequestSerializer,
)
from inference.services import Completed, Streamed, StreamError
from llmsite.drf import AsyncAPIView


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def sse_frames(stream: Streamed) -> AsyncIterator[bytes]:
    """One `data:` event per chunk, then `data: [DONE]`; a stream that fails ends
    with an `error` event and then `[DONE]` too, so every client sees the end."""
    try:
        async for item in stream.events:
            if isinstance(item, StreamError):
                yield _sse(item.error.body())
                break
            yield _sse(item)
        yield _sse("[DONE]")
    finally:
        # Closing the outer generator (a client that left) must close the
        # service's stream now, so it frees the engine and bills.
        await stream.aclose()


def respond(result: Completed | Streamed, frames=sse_frames) -> Response | StreamingHttpResponse:
    """The result as a response; a stream's events as `frames(stream)` renders them
    (OpenAI's `data:` events by default)."""
    if isinstance(result, Completed):
        return Response(result.body, headers=result.headers)
    response = StreamingHttpResponse(frames(result), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in result.headers.items():
        response[name] = value
    # A client that leaves before the body is first iterated never starts
    # sse_frames: closing the response still ends the stream and bills it.
    response._resource_closers.append(result.close_soon)
    return response


class InferenceView(AsyncAPIView):
    """A /v1 endpoint: it hands the body to its service and renders the result.

    The service writes the request's one usage record and puts the
    x-ratelimit-* and x-llmsite-* headers on its result or its error."""

    permission_classes = [CanInfer]
    endpoint = ""

    async def body(self, request):
        """The parsed body; a body that cannot be read is refused (and recorded) here."""
        try:
            return request.data
        except Exception as exc:
            raise await services.request_refuse(
                principal=request.user,
                endpoint=self.endpoint,
                request_id=request._request.request_id,
                error=exc,
            ) from exc

    async def run(self, request, service):
        result = await service(
            principal=request.user,
            body=await self.body(request),
            request_id=request._request.request_id,
            endpoint=self.endpoint,
        )
        if isinstance(result, Completed):
            result = replace(result, body=self.render(request, result.body))
        return respond(result)

    def render(self, request, body: dict) -> dict:
        """The answer's body as this endpoint's clients read it (a hook: the seed
        system's forms of batch, compare and analyze add their names)."""
        return body


class ModelListView(InferenceView):
    endpoint = "models"

    @extend_schema(
        operation_id="listModels",
        tags=["Models"],
        responses={
            200: openapi.ok(
                openapi.ListModelsResponse,
                {"object": "list", "data": [openapi.MODEL_EXAMPLE]},
                "The models and router aliases this key may use.",
            ),
            401: ERRORS[401],
            429: ERRORS[429],
        },
    )
    async def get(self, request):
        return respond(
            await services.model_list(
                principal=request.user, request_id=request._request.request_id
            )
        )


class ModelDetailView(InferenceView):
    endpoint = "models"

    @extend_schema(
        operation_id="retrieveModel",
        tags=["Models"],
        responses={
            200: openapi.ok(openapi.Model, openapi.MODEL_EXAMPLE),
            401: ERRORS[401],
            404: ERRORS[404],
            429: ERRORS[429],
        },
    )
    async def get(self, request, model_id: str):
        return respond(
            await services.model_retrieve(
                principal=request.user, request_id=request._request.request_id, model_id=model_id
            )
        )


class CompletionView(InferenceView):
    endpoint = "completions"

    @extend_schema(
        operation_id="createCompletion",
        tags=["Completions"],
        request=CompletionRequestSerializer,
        responses={
            **openapi.generated(
                openapi.Completion,
                openapi.COMPLETION_EXAMPLE,
                openapi.CompletionChunk,
                openapi.COMPLETION_CHUNK_EXAMPLE,
            ),
            **ERRORS,
        },
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
        return await self.run(request, services.completion_create)


class ChatCompletionView(InferenceView):
    endpoint = "chat.completions"

    @extend_schema(
        operation_id="createChatCompletion",
        tags=["Chat"],
        request=ChatCompletionRequestSerializer,
        responses={
            **openapi.generated(
                openapi.ChatCompletion,
                openapi.CHAT_COMPLETION_EXAMPLE,
                openapi.ChatCompletionChunk,
                openapi.CHAT_CHUNK_EXAMPLE,
            ),
            **ERRORS,
        },
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
        return await self.run(request, services.chat_completion_create)


class EmbeddingView(InferenceView):
    endpoint = "embeddings"

    @extend_schema(
        operation_id="createEmbedding",
        tags=["Embeddings"],
        request=EmbeddingRequestSerializer,
        responses={
            200: openapi.ok(openapi.CreateEmbeddingResponse, openapi.EMBEDDING_EXAMPLE),
            **ERRORS,
        },
        examples=[
            OpenApiExample(
                "embedding",
                request_only=True,
                value={"model": "gemma-3-270m", "input": ["first text", "second text"]},
            )
        ],
    )
    async def post(self, request):
        return await self.run(request, services.embedding_create)


# -- /v1/batch, /v1/compare, /v1/analyze ---------------------------------------------------
class FanOutView(InferenceView):
    """A request made of several /v1 requests, each accounted on its own.

    A refused envelope (invalid body) is one record, like any refused request.
    Once the body is valid each item reserves quota and writes its record, and
    the envelope adds neither a record nor a unit of RPM. The response carries
    the x-ratelimit-* of the tightest item. (See `inference.extras`.)
    """

    service = None  # set by subclasses

    async def post(self, request):
        return await self.run(request, self.service)


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
    service = staticmethod(extras.batch_run)

    @extend_schema(
        operation_id="createBatch",
        tags=["Batch"],
        request=BatchRequestSerializer,
        responses={
            200: openapi.ok(openapi.BatchAnswer, openapi.BATCH_RESULT_EXAMPLE),
            400: ERRORS[400],
            401: ERRORS[401],
            413: ERRORS[413],
        },
        examples=[
            OpenApiExample("batch", request_only=True, value=BATCH_EXAMPLE),
            *seed_api.request_examples(seed_api.BATCH_EXAMPLES),
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
    service = staticmethod(extras.compare_run)

    @extend_schema(
        operation_id="createComparison",
        tags=["Compare"],
        request=CompareRequestSerializer,
        responses={
            200: openapi.ok(openapi.CompareAnswer, openapi.COMPARE_RESULT_EXAMPLE),
            400: ERRORS[400],
            401: ERRORS[401],
            413: ERRORS[413],
        },
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
            *seed_api.request_examples(seed_api.COMPARE_EXAMPLES),
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
        responses={
            200: openapi.ok(openapi.Analysis, openapi.ANALYSIS_EXAMPLE),
            **ERRORS,
            502: openapi.INVALID_MODEL_OUTPUT,
        },
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
        return await self.run(request, services.analysis_create)

    def render(self, request, body: dict) -> dict:
        return seed_api.analysis_with_seed_fields(
            body, text=request.data.get("text", ""), request_id=request._request.request_id
        )
