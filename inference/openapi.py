"""The shapes the /v1 endpoints answer with, for the OpenAPI schema only.

Response-only serializers: nothing validates or renders with them (the service
builds each body, see `inference.services`). They name OpenAI's types
(`ChatCompletion`, `ChatCompletionChunk`, `CreateEmbeddingResponse`, ...) so
that generated clients and Swagger show what comes back, streams included.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema_field,
)
from rest_framework import serializers

# -- shared pieces ----------------------------------------------------------------------
FINISH_REASON_HELP = (
    "`stop` (a stop sequence or the end of the text), `length` (max_tokens or the "
    "context), `tool_calls`, or what a remote backend reported; null until the choice ends."
)


class Const(serializers.CharField):
    """A string that is always `value` (an `object` or `role`): a one-value enum
    inline in its component, not a named enum of its own."""

    def __init__(self, value: str, **kwargs) -> None:
        self.value = value
        super().__init__(**kwargs)


class ConstExtension(OpenApiSerializerFieldExtension):
    target_class = Const

    def map_serializer_field(self, auto_schema, direction):
        return {"type": "string", "enum": [self.target.value]}


class ResponseSerializer(serializers.Serializer):
    """Read-only documentation of a body: every field is required unless said otherwise."""


class ErrorDetail(ResponseSerializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="`invalid_request_error`, `requests`, `server_error`, …")
    param = serializers.CharField(allow_null=True, help_text="The offending field, if any.")
    code = serializers.CharField(allow_null=True, help_text="A stable machine-readable code.")


class ErrorResponse(ResponseSerializer):
    """What every error answers with, REST, SSE and WebSocket alike."""

    error = ErrorDetail()


class CompletionUsage(ResponseSerializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class _Envelope(ResponseSerializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField(help_text="Unix time, seconds.")
    model = serializers.CharField(help_text="The model that answered (after routing).")
    system_fingerprint = serializers.CharField()


# -- chat completions -------------------------------------------------------------------
class FunctionCall(ResponseSerializer):
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="The arguments as a JSON-encoded string.")


class ChatCompletionMessageToolCall(ResponseSerializer):
    id = serializers.CharField()
    type = Const("function")
    function = FunctionCall()


class ChatCompletionMessage(ResponseSerializer):
    role = Const("assistant")
    content = serializers.CharField(allow_null=True, allow_blank=True)
    refusal = serializers.CharField(allow_null=True)
    tool_calls = ChatCompletionMessageToolCall(
        many=True, required=False, help_text="Present when the model called tools."
    )


class TopLogprob(ResponseSerializer):
    token = serializers.CharField()
    logprob = serializers.FloatField()
    bytes = serializers.ListField(child=serializers.IntegerField(), allow_null=True)


class ChatCompletionTokenLogprob(TopLogprob):
    top_logprobs = TopLogprob(many=True)


class ChatCompletionLogprobs(ResponseSerializer):
    content = ChatCompletionTokenLogprob(many=True, allow_null=True)
    refusal = ChatCompletionTokenLogprob(many=True, allow_null=True)


class ChatCompletionChoice(ResponseSerializer):
    index = serializers.IntegerField()
    message = ChatCompletionMessage()
    logprobs = ChatCompletionLogprobs(allow_null=True, help_text="With `logprobs: true`.")
    finish_reason = serializers.CharField(allow_null=True, help_text=FINISH_REASON_HELP)


class ChatCompletion(_Envelope):
    object = Const("chat.completion")
    choices = ChatCompletionChoice(many=True)
    usage = CompletionUsage()


class FunctionCallDelta(ResponseSerializer):
    name = serializers.CharField(required=False)
    arguments = serializers.CharField(required=False, help_text="The next piece of the JSON.")


class ChatCompletionToolCallDelta(ResponseSerializer):
    index = serializers.IntegerField()
    id = serializers.CharField(required=False)
    type = Const("function", required=False)
    function = FunctionCallDelta(required=False)


class ChatCompletionDelta(ResponseSerializer):
    """What a chunk adds to its choice's message: the first carries the role."""

    role = Const("assistant", required=False)
    content = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    refusal = serializers.CharField(required=False, allow_null=True)
    tool_calls = ChatCompletionToolCallDelta(many=True, required=False)


class ChatCompletionChunkChoice(ResponseSerializer):
    index = serializers.IntegerField()
    delta = ChatCompletionDelta()
    logprobs = ChatCompletionLogprobs(allow_null=True)
    finish_reason = serializers.CharField(allow_null=True, help_text=FINISH_REASON_HELP)


class ChatCompletionChunk(_Envelope):
    object = Const("chat.completion.chunk")
    choices = ChatCompletionChunkChoice(
        many=True, help_text="Empty in the last chunk of `include_usage`."
    )
    usage = CompletionUsage(
        required=False,
        allow_null=True,
        help_text="With `stream_options.include_usage`: null on every chunk but the last.",
    )


# -- completions ------------------------------------------------------------------------
class CompletionLogprobs(ResponseSerializer):
    tokens = serializers.ListField(child=serializers.CharField())
    token_logprobs = serializers.ListField(child=serializers.FloatField())
    top_logprobs = serializers.ListField(
        child=serializers.DictField(child=serializers.FloatField(), allow_null=True)
    )
    text_offset = serializers.ListField(child=serializers.IntegerField())


class CompletionChoice(ResponseSerializer):
    text = serializers.CharField(allow_blank=True)
    index = serializers.IntegerField()
    logprobs = CompletionLogprobs(allow_null=True, help_text="With `logprobs: n`.")
    finish_reason = serializers.CharField(allow_null=True, help_text=FINISH_REASON_HELP)


class Completion(_Envelope):
    object = Const("text_completion")
    choices = CompletionChoice(many=True)
    usage = CompletionUsage()


class CompletionChunk(Completion):
    choices = CompletionChoice(many=True, help_text="Empty in the last chunk of `include_usage`.")
    usage = CompletionUsage(
        required=False,
        allow_null=True,
        help_text="With `stream_options.include_usage`: null on every chunk but the last.",
    )


# -- embeddings -------------------------------------------------------------------------
@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "string", "description": "little-endian float32, base64"},
        ]
    }
)
class EmbeddingVectorField(serializers.JSONField):
    pass


class Embedding(ResponseSerializer):
    object = Const("embedding")
    index = serializers.IntegerField()
    embedding = EmbeddingVectorField(help_text="Floats, or base64 with `encoding_format`.")


class EmbeddingUsage(ResponseSerializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class CreateEmbeddingResponse(ResponseSerializer):
    object = Const("list")
    data = Embedding(many=True)  # type: ignore[assignment]  # OpenAI's field name shadows DRF's
    model = serializers.CharField()
    usage = EmbeddingUsage()


# -- models -----------------------------------------------------------------------------
class Model(ResponseSerializer):
    id = serializers.CharField(help_text="A model id, or a router alias.")
    object = Const("model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField(help_text="`llmsite-router` for an alias.")


class ListModelsResponse(ResponseSerializer):
    object = Const("list")
    data = Model(many=True)  # type: ignore[assignment]  # OpenAI's field name shadows DRF's


# -- batch, compare, analyze ------------------------------------------------------------
class FanOutTotals(ResponseSerializer):
    requests = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField(help_text="As billed, over every item.")
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    latency_ms = serializers.IntegerField()


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="BatchItemResponse",
        serializers=[ChatCompletion, Completion, CreateEmbeddingResponse],
        resource_type_field_name=None,
    )
)
class BatchItemResponseField(serializers.JSONField):
    pass


class BatchEntry(ResponseSerializer):
    index = serializers.IntegerField()
    custom_id = serializers.CharField(allow_null=True)
    status_code = serializers.IntegerField(help_text="What the request alone would have had.")
    response = BatchItemResponseField(required=False, help_text="When `status_code` is 200.")
    latency_ms = serializers.IntegerField(required=False, help_text="When `status_code` is 200.")
    error = ErrorDetail(required=False, help_text="Otherwise.")


class BatchResult(ResponseSerializer):
    object = Const("batch.result")
    data = BatchEntry(many=True, help_text="In request order.")  # type: ignore[assignment]  # OpenAI's field name shadows DRF's
    totals = FanOutTotals()


class CompareEntry(ResponseSerializer):
    index = serializers.IntegerField()
    model = serializers.CharField(help_text="The model or alias asked.")
    status_code = serializers.IntegerField()
    answered_model = serializers.CharField(required=False, help_text="The model that answered.")
    text = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    finish_reason = serializers.CharField(
        required=False, allow_null=True, help_text=FINISH_REASON_HELP
    )
    latency_ms = serializers.IntegerField(required=False)
    ttft_ms = serializers.IntegerField(required=False, allow_null=True)
    usage = CompletionUsage(required=False)
    tokens_per_second = serializers.FloatField(required=False, allow_null=True)
    error = ErrorDetail(required=False, help_text="Instead of the fields above, on failure.")


class CompareResult(ResponseSerializer):
    object = Const("compare.result")
    data = CompareEntry(many=True, help_text="In the order of `models`.")  # type: ignore[assignment]  # OpenAI's field name shadows DRF's
    totals = FanOutTotals()


class SeedResult(ResponseSerializer):
    text = serializers.CharField(allow_null=True, allow_blank=True)
    tokens = serializers.IntegerField(allow_null=True, help_text="Completion tokens.")
    model = serializers.CharField(allow_null=True, help_text="The model that answered.")
    latency = serializers.IntegerField(allow_null=True, help_text="Milliseconds.")
    finish_reason = serializers.CharField(allow_null=True, help_text=FINISH_REASON_HELP)
    usage = CompletionUsage(allow_null=True)
    ttft_ms = serializers.IntegerField(required=False, allow_null=True, help_text="Compare.")
    tokens_per_second = serializers.FloatField(required=False, allow_null=True)


class SeedEntry(ResponseSerializer):
    index = serializers.IntegerField()
    custom_id = serializers.CharField(required=False)
    model = serializers.CharField(required=False, help_text="Compare: the model asked.")
    success = serializers.BooleanField()
    status_code = serializers.IntegerField()
    result = SeedResult(required=False, help_text="On success.")
    error = serializers.CharField(
        required=False, allow_blank=True, help_text="On failure: the message alone."
    )
    error_detail = ErrorDetail(required=False, help_text="On failure: the OpenAI error.")


class SeedBatchResult(ResponseSerializer):
    """LLM-Runner-Router's batch answer (inference.seed_api), for items in its form."""

    object = Const("batch")
    results = SeedEntry(many=True)
    total = serializers.IntegerField()
    successful = serializers.IntegerField()
    failed = serializers.IntegerField()
    totals = FanOutTotals()


class SeedComparison(ResponseSerializer):
    """LLM-Runner-Router's compare answer (inference.seed_api), for a body with `options`."""

    object = Const("comparison")
    prompt = serializers.CharField(allow_null=True)
    messages = serializers.ListField(child=serializers.DictField(), required=False)
    models = serializers.ListField(child=serializers.CharField())
    results = SeedEntry(many=True)
    request_id = serializers.CharField()
    totals = FanOutTotals()


# A fan-out answers in the form it was asked in: llmsite's, or the seed's.
BatchAnswer = PolymorphicProxySerializer(
    component_name="BatchAnswer",
    serializers=[BatchResult, SeedBatchResult],
    resource_type_field_name=None,
)
CompareAnswer = PolymorphicProxySerializer(
    component_name="CompareAnswer",
    serializers=[CompareResult, SeedComparison],
    resource_type_field_name=None,
)


class Sentiment(ResponseSerializer):
    label = serializers.ChoiceField(choices=["positive", "negative", "neutral"])  # type: ignore[assignment]  # OpenAI's field name shadows DRF's
    score = serializers.FloatField(min_value=0, max_value=1)


class SeedAnalysisResults(ResponseSerializer):
    sentiment = serializers.CharField(required=False, help_text="The label alone.")
    sentiment_score = serializers.FloatField(required=False)
    keywords = serializers.ListField(child=serializers.CharField(), required=False)
    summary = serializers.CharField(required=False)


class Analysis(ResponseSerializer):
    object = Const("analysis")
    model = serializers.CharField()
    sentiment = Sentiment(required=False)
    keywords = serializers.ListField(child=serializers.CharField(), required=False)
    summary = serializers.CharField(required=False)
    usage = CompletionUsage()
    # LLM-Runner-Router's names beside llmsite's (inference.seed_api).
    text = serializers.CharField(help_text="The analysed text's first 100 characters.")
    results = SeedAnalysisResults()
    request_id = serializers.CharField()


# -- examples ---------------------------------------------------------------------------
_META = {"created": 1767225600, "model": "gemma-3-270m", "system_fingerprint": "fp_gemma_4096"}
_USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}

CHAT_COMPLETION_EXAMPLE = {
    "id": "chatcmpl-3f1c0e6a9b8d4c2e",
    "object": "chat.completion",
    **_META,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": _USAGE,
}
CHAT_CHUNK_EXAMPLE = {
    "id": "chatcmpl-3f1c0e6a9b8d4c2e",
    "object": "chat.completion.chunk",
    **_META,
    "choices": [
        {"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}
    ],
}
COMPLETION_EXAMPLE = {
    "id": "cmpl-5d2a7c1e0f9b4e3a",
    "object": "text_completion",
    **_META,
    "choices": [{"text": " Paris.", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9},
}
COMPLETION_CHUNK_EXAMPLE = {
    "id": "cmpl-5d2a7c1e0f9b4e3a",
    "object": "text_completion",
    **_META,
    "choices": [{"text": " Paris", "index": 0, "logprobs": None, "finish_reason": None}],
}
EMBEDDING_EXAMPLE = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456, 0.0789]}],
    "model": "gemma-3-270m",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
MODEL_EXAMPLE = {
    "id": "gemma-3-270m",
    "object": "model",
    "created": 1767225600,
    "owned_by": "llmsite",
}
_TOTALS = {
    "requests": 2,
    "succeeded": 2,
    "failed": 0,
    "prompt_tokens": 14,
    "completion_tokens": 3,
    "total_tokens": 17,
    "latency_ms": 412,
}
BATCH_RESULT_EXAMPLE = {
    "object": "batch.result",
    "data": [
        {
            "index": 0,
            "custom_id": "greet",
            "status_code": 200,
            "response": CHAT_COMPLETION_EXAMPLE,
        },
        {
            "index": 1,
            "custom_id": "vec",
            "status_code": 404,
            "error": {
                "message": "The model `nope` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            },
        },
    ],
    "totals": {**_TOTALS, "succeeded": 1, "failed": 1, "prompt_tokens": 12, "total_tokens": 15},
}
COMPARE_RESULT_EXAMPLE = {
    "object": "compare.result",
    "data": [
        {
            "index": 0,
            "model": "auto",
            "answered_model": "gemma-3-270m",
            "status_code": 200,
            "text": " Paris.",
            "finish_reason": "stop",
            "latency_ms": 204,
            "ttft_ms": 61,
            "usage": {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9},
            "tokens_per_second": 14.2,
        }
    ],
    "totals": {**_TOTALS, "requests": 1, "succeeded": 1, "prompt_tokens": 6, "total_tokens": 9},
}
ANALYSIS_EXAMPLE = {
    "object": "analysis",
    "model": "qwen2.5-coder-0.5b-instruct",
    "sentiment": {"label": "positive", "score": 0.9},
    "keywords": ["service", "quick"],
    "summary": "The service was quick and friendly.",
    "usage": {"prompt_tokens": 64, "completion_tokens": 22, "total_tokens": 86},
    "text": "The service was quick and friendly.",
    "results": {
        "sentiment": "positive",
        "sentiment_score": 0.9,
        "keywords": ["service", "quick"],
        "summary": "The service was quick and friendly.",
    },
    "request_id": "3b1f0c2a9d8e4f6a",
}


def ok(serializer, example: dict, description: str = "OK") -> OpenApiResponse:
    """A 200 application/json answer with its example."""
    return OpenApiResponse(
        serializer,
        description=description,
        examples=[OpenApiExample("ok", value=example, response_only=True, status_codes=["200"])],
    )


def generated(body, body_example: dict, chunk, chunk_example: dict) -> dict:
    """The two 200s of a text endpoint: the whole answer as JSON, or a stream of
    server-sent events whose schema is one event's payload."""
    description = (
        f"Without `stream`: one `{body.__name__}` (application/json). With `stream: true`: "
        f"server-sent events (text/event-stream), one `data: <{chunk.__name__}>` event per "
        "chunk, then `data: [DONE]`. A failure after the stream began ends it with one "
        "`data: <ErrorResponse>` event and no `[DONE]`."
    )
    chunk_examples = [
        OpenApiExample(
            "chunk",
            value=chunk_example,
            response_only=True,
            status_codes=["200"],
            media_type="text/event-stream",
            summary=f"The payload of one `data:` event ({chunk.__name__})",
        )
    ]
    return {
        (200, "application/json"): ok(body, body_example, description),
        (200, "text/event-stream"): OpenApiResponse(chunk, description, chunk_examples),
    }


def _error(status: int, description: str, type_: str, code: str, message: str, param=None):
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return OpenApiResponse(
        ErrorResponse,
        description=description,
        examples=[OpenApiExample(code, value=body, response_only=True, status_codes=[str(status)])],
    )


INVALID_MODEL_OUTPUT = _error(
    502,
    "The model's answer did not hold the requested structure (billed)",
    "server_error",
    "invalid_model_output",
    "The model's answer was not valid JSON.",
)

ERRORS = {
    400: _error(
        400,
        "Invalid request",
        "invalid_request_error",
        "invalid_value",
        "Invalid value for 'max_tokens': Ensure this value is greater than or equal to 1.",
        param="max_tokens",
    ),
    401: _error(
        401,
        "Missing or invalid API key",
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-llm-ab...wxyz.",
    ),
    404: _error(
        404,
        "Model not found, or not allowed to this key",
        "invalid_request_error",
        "model_not_found",
        "The model `nope` does not exist or you do not have access to it.",
        param="model",
    ),
    413: _error(
        413,
        "Request body too large",
        "invalid_request_error",
        "request_too_large",
        "The request body is larger than this server accepts.",
    ),
    429: _error(
        429,
        "A rate limit, quota or budget refused the request (see Retry-After)",
        "requests",
        "rate_limit_exceeded",
        "Limit reached for your organization: requests per minute 60, used 60, requested 1.",
    ),
    503: _error(
        503,
        "Model loading, overloaded or unavailable (see Retry-After)",
        "server_error",
        "model_not_ready",
        "The model `gemma-3-270m` is still loading; retry shortly.",
        param="model",
    ),
}
