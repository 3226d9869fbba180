"""The shapes of Anthropic's Messages API as llmsite serves it, for the OpenAPI
schema only (see `inference.openapi`): nothing validates or renders with them.
`inference.anthropic` builds every body."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers

from inference.openapi import Const, ResponseSerializer

STOP_REASONS = ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


# -- request (documentation: inference.anthropic.messages_to_chat validates) -------------------
class AnthropicMessageParam(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = serializers.JSONField(
        help_text="A string, or content blocks: `text`, `tool_use` (assistant), "
        "`tool_result` (user)."
    )


class AnthropicToolParam(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(required=False)
    input_schema = serializers.DictField(help_text="A JSON Schema of type object.")


class AnthropicMetadataParam(serializers.Serializer):
    user_id = serializers.CharField(required=False, allow_null=True)


class AnthropicCountTokensRequest(serializers.Serializer):
    model = serializers.CharField(help_text="A model id, an alias or `auto`.")
    messages = AnthropicMessageParam(many=True)
    system = serializers.JSONField(required=False, help_text="A string or text blocks.")
    tools = AnthropicToolParam(many=True, required=False)
    tool_choice = serializers.JSONField(
        required=False,
        help_text='`{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name"}`; '
        "`disable_parallel_tool_use` is accepted.",
    )


class AnthropicMessageRequest(AnthropicCountTokensRequest):
    model = serializers.CharField(help_text="A model id or a route alias (`auto`).")
    max_tokens = serializers.IntegerField(min_value=1)
    stop_sequences = serializers.ListField(child=serializers.CharField(), required=False)
    stream = serializers.BooleanField(required=False, default=False)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    metadata = AnthropicMetadataParam(required=False)


# -- response -----------------------------------------------------------------------------------
class AnthropicTextBlock(ResponseSerializer):
    type = Const("text")
    text = serializers.CharField()


class AnthropicToolUseBlock(ResponseSerializer):
    type = Const("tool_use")
    id = serializers.CharField()
    name = serializers.CharField()
    input = serializers.DictField(help_text="The call's arguments.")


def content_block() -> PolymorphicProxySerializer:
    """A text or tool_use block (a fresh field each time: DRF binds fields once)."""
    return PolymorphicProxySerializer(
        component_name="AnthropicContentBlock",
        serializers=[AnthropicTextBlock, AnthropicToolUseBlock],
        resource_type_field_name=None,
    )


class AnthropicUsage(ResponseSerializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_creation_input_tokens = serializers.IntegerField(help_text="Always 0 here.")
    cache_read_input_tokens = serializers.IntegerField(help_text="Always 0 here.")


class AnthropicMessage(ResponseSerializer):
    id = serializers.CharField()
    type = Const("message")
    role = Const("assistant")
    model = serializers.CharField(help_text="The model that answered (after routing).")
    content = serializers.ListField(child=content_block())
    stop_reason = serializers.ChoiceField(choices=STOP_REASONS, allow_null=True)
    stop_sequence = serializers.CharField(allow_null=True)
    usage = AnthropicUsage()


class AnthropicCountTokensResponse(ResponseSerializer):
    input_tokens = serializers.IntegerField()


class AnthropicErrorDetail(ResponseSerializer):
    type = serializers.CharField(
        help_text="invalid_request_error, authentication_error, permission_error, "
        "not_found_error, request_too_large, rate_limit_error, api_error, overloaded_error"
    )
    message = serializers.CharField()


class AnthropicErrorResponse(ResponseSerializer):
    type = Const("error")
    error = AnthropicErrorDetail()
    request_id = serializers.CharField(required=False)


# -- stream events ------------------------------------------------------------------------------
class AnthropicStreamMessage(AnthropicMessage):
    content = serializers.ListField(child=content_block(), help_text="Always empty here.")


class AnthropicMessageStartEvent(ResponseSerializer):
    type = Const("message_start")
    message = AnthropicStreamMessage()


class AnthropicContentBlockStartEvent(ResponseSerializer):
    type = Const("content_block_start")
    index = serializers.IntegerField()
    content_block = content_block()


class AnthropicTextDelta(ResponseSerializer):
    type = Const("text_delta")
    text = serializers.CharField()


class AnthropicInputJsonDelta(ResponseSerializer):
    type = Const("input_json_delta")
    partial_json = serializers.CharField()


class AnthropicContentBlockDeltaEvent(ResponseSerializer):
    type = Const("content_block_delta")
    index = serializers.IntegerField()
    delta = PolymorphicProxySerializer(
        component_name="AnthropicContentDelta",
        serializers=[AnthropicTextDelta, AnthropicInputJsonDelta],
        resource_type_field_name=None,
    )


class AnthropicContentBlockStopEvent(ResponseSerializer):
    type = Const("content_block_stop")
    index = serializers.IntegerField()


class AnthropicMessageDelta(ResponseSerializer):
    stop_reason = serializers.ChoiceField(choices=STOP_REASONS)
    stop_sequence = serializers.CharField(allow_null=True)


class AnthropicDeltaUsage(ResponseSerializer):
    output_tokens = serializers.IntegerField()


class AnthropicMessageDeltaEvent(ResponseSerializer):
    type = Const("message_delta")
    delta = AnthropicMessageDelta()
    usage = AnthropicDeltaUsage()


class AnthropicMessageStopEvent(ResponseSerializer):
    type = Const("message_stop")


class AnthropicPingEvent(ResponseSerializer):
    type = Const("ping")


STREAM_EVENT = PolymorphicProxySerializer(
    component_name="AnthropicStreamEvent",
    serializers=[
        AnthropicMessageStartEvent,
        AnthropicContentBlockStartEvent,
        AnthropicContentBlockDeltaEvent,
        AnthropicContentBlockStopEvent,
        AnthropicMessageDeltaEvent,
        AnthropicMessageStopEvent,
        AnthropicPingEvent,
        AnthropicErrorResponse,
    ],
    resource_type_field_name=None,
)

# -- examples -----------------------------------------------------------------------------------
MESSAGE_REQUEST = {
    "model": "qwen2.5-coder-0.5b-instruct",
    "max_tokens": 64,
    "system": "You are terse.",
    "messages": [{"role": "user", "content": "Say hello."}],
}
TOOL_REQUEST = {
    "model": "qwen2.5-coder-0.5b-instruct",
    "max_tokens": 128,
    "tools": [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ],
    "tool_choice": {"type": "auto"},
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
}
MESSAGE = {
    "id": "msg_0d8f4c2e9a7b4b1f8e3c2a1b0c9d8e7f",
    "type": "message",
    "role": "assistant",
    "model": "qwen2.5-coder-0.5b-instruct",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    },
}
DELTA_EVENT = {
    "type": "content_block_delta",
    "index": 0,
    "delta": {"type": "text_delta", "text": "Hello"},
}


def _error(status: int, kind: str, message: str) -> OpenApiResponse:
    return OpenApiResponse(
        AnthropicErrorResponse,
        description=f"`{kind}`",
        examples=[
            OpenApiExample(
                kind,
                value={"type": "error", "error": {"type": kind, "message": message}},
                response_only=True,
                status_codes=[str(status)],
            )
        ],
    )


ERRORS: dict[int | tuple[int, str], OpenApiResponse] = {
    400: _error(400, "invalid_request_error", "max_tokens: Field required"),
    401: _error(401, "authentication_error", "Incorrect API key provided: sk-llm-ab***wxyz."),
    403: _error(403, "permission_error", "This API key lacks the `inference` scope."),
    404: _error(
        404,
        "not_found_error",
        "The model `nope` does not exist or you do not have access to it.",
    ),
    429: _error(
        429, "rate_limit_error", "Limit reached for your organization: requests per minute."
    ),
    503: _error(503, "overloaded_error", "The model is still loading; retry shortly."),
}


def ok(serializer, example: dict, description: str = "OK") -> OpenApiResponse:
    return OpenApiResponse(
        serializer,
        description=description,
        examples=[OpenApiExample("ok", value=example, response_only=True, status_codes=["200"])],
    )


MESSAGE_RESPONSES: dict[int | tuple[int, str], OpenApiResponse] = {
    (200, "application/json"): ok(
        AnthropicMessage,
        MESSAGE,
        "Without `stream`: one Message. With `stream: true`: server-sent events "
        "(text/event-stream), each `event: <type>` with `data: <AnthropicStreamEvent>`: "
        "message_start, ping, then per content block content_block_start, "
        "content_block_delta (text_delta or input_json_delta) and content_block_stop, then "
        "message_delta (stop_reason, usage.output_tokens) and message_stop. A failure after "
        "the stream began ends it with one `event: error`.",
    ),
    (200, "text/event-stream"): OpenApiResponse(
        STREAM_EVENT,
        "One event's `data:` payload",
        [
            OpenApiExample(
                "event",
                value=DELTA_EVENT,
                response_only=True,
                status_codes=["200"],
                media_type="text/event-stream",
            )
        ],
    ),
    **ERRORS,
}
COUNT_RESPONSES: dict[int | tuple[int, str], OpenApiResponse] = {
    200: ok(AnthropicCountTokensResponse, {"input_tokens": 21}),
    **ERRORS,
}
