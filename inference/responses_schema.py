"""The shapes of OpenAI's Responses API as llmsite serves it, for the OpenAPI
schema only (see `inference.openapi`): nothing validates or renders with them.
`inference.responses` builds every body."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers

from inference.openapi import ERRORS as _ERRORS
from inference.openapi import Const, ResponseSerializer, _error, ok

STATUSES = ["completed", "incomplete", "in_progress", "failed"]
ITEM_STATUSES = ["completed", "incomplete", "in_progress"]


# -- request (documentation: inference.responses.response_plan validates) -----------------------
class ResponseFunctionToolParam(serializers.Serializer):
    type = Const("function")
    name = serializers.CharField()
    description = serializers.CharField(required=False, allow_null=True)
    parameters = serializers.DictField(required=False, allow_null=True)
    strict = serializers.BooleanField(required=False, allow_null=True)


class ResponseCreateRequest(serializers.Serializer):
    model = serializers.CharField(
        required=False, help_text="A model id or a route alias (`auto`, the default)."
    )
    input = serializers.JSONField(
        help_text="A string, or items: messages (role user, assistant, system or developer; "
        "content a string or `input_text`/`output_text` parts), `function_call` "
        "(`call_id`, `name`, `arguments`) and `function_call_output` (`call_id`, `output`)."
    )
    instructions = serializers.CharField(required=False, allow_null=True)
    max_output_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    tools = ResponseFunctionToolParam(many=True, required=False)
    tool_choice = serializers.JSONField(
        required=False,
        help_text='"auto", "none", "required" or `{"type": "function", "name"}`.',
    )
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    text = serializers.JSONField(
        required=False,
        help_text='`{"format": {"type": "text" | "json_object"}}` or `{"format": {"type": '
        '"json_schema", "name", "schema", "strict"}}`.',
    )
    metadata = serializers.DictField(child=serializers.CharField(), required=False)
    user = serializers.CharField(required=False, allow_null=True)
    store = serializers.BooleanField(required=False, default=True)
    stream = serializers.BooleanField(required=False, default=False)
    previous_response_id = serializers.CharField(required=False, allow_null=True)
    prompt_cache_key = serializers.CharField(
        required=False, allow_null=True, help_text="Accepted and echoed; caching is automatic."
    )
    max_tool_calls = serializers.IntegerField(
        required=False, allow_null=True, help_text="Echoed: there are no built-in tools here."
    )


# -- response -----------------------------------------------------------------------------------
class ResponseOutputText(ResponseSerializer):
    type = Const("output_text")
    text = serializers.CharField(allow_blank=True)
    annotations = serializers.ListField(child=serializers.JSONField(), help_text="Always empty.")
    logprobs = serializers.ListField(
        child=serializers.JSONField(), required=False, help_text="Always empty."
    )


class ResponseInputText(ResponseSerializer):
    type = Const("input_text")
    text = serializers.CharField(allow_blank=True)


class ResponseOutputMessage(ResponseSerializer):
    type = Const("message")
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=ITEM_STATUSES)
    role = Const("assistant")
    content = ResponseOutputText(many=True)


class ResponseFunctionToolCall(ResponseSerializer):
    type = Const("function_call")
    id = serializers.CharField()
    call_id = serializers.CharField()
    name = serializers.CharField()
    arguments = serializers.CharField(
        allow_blank=True, help_text="The arguments as a JSON-encoded string."
    )
    status = serializers.ChoiceField(choices=ITEM_STATUSES)


class ResponseInputMessageItem(ResponseSerializer):
    type = Const("message")
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=ITEM_STATUSES)
    role = serializers.ChoiceField(choices=["user", "system", "developer"])
    content = ResponseInputText(many=True)


class ResponseFunctionToolCallOutputItem(ResponseSerializer):
    type = Const("function_call_output")
    id = serializers.CharField()
    call_id = serializers.CharField()
    output = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=ITEM_STATUSES)


def output_item() -> PolymorphicProxySerializer:
    """A message or function_call item (a fresh field each time: DRF binds fields once)."""
    return PolymorphicProxySerializer(
        component_name="ResponseOutputItem",
        serializers=[ResponseOutputMessage, ResponseFunctionToolCall],
        resource_type_field_name=None,
    )


class ResponseUsageInputDetails(ResponseSerializer):
    cached_tokens = serializers.IntegerField(help_text="Always 0 here.")


class ResponseUsageOutputDetails(ResponseSerializer):
    reasoning_tokens = serializers.IntegerField(help_text="Always 0 here.")


class ResponseUsage(ResponseSerializer):
    input_tokens = serializers.IntegerField()
    input_tokens_details = ResponseUsageInputDetails()
    output_tokens = serializers.IntegerField()
    output_tokens_details = ResponseUsageOutputDetails()
    total_tokens = serializers.IntegerField()


class ResponseErrorObject(ResponseSerializer):
    code = serializers.CharField(help_text="`server_error` or `rate_limit_exceeded`.")
    message = serializers.CharField()


class ResponseIncompleteDetails(ResponseSerializer):
    reason = serializers.ChoiceField(choices=["max_output_tokens", "content_filter"])


class ResponseReasoning(ResponseSerializer):
    effort = serializers.CharField(allow_null=True, help_text="Always null here.")
    summary = serializers.CharField(allow_null=True, help_text="Always null here.")


class ResponseTextConfig(ResponseSerializer):
    format = serializers.JSONField(
        help_text='`{"type": "text"}`, `{"type": "json_object"}` or the `json_schema` asked for.'
    )
    verbosity = serializers.CharField()


class ResponseFunctionTool(ResponseSerializer):
    type = Const("function")
    name = serializers.CharField()
    description = serializers.CharField(allow_null=True)
    parameters = serializers.DictField(allow_null=True)
    strict = serializers.BooleanField(allow_null=True)


class ResponseObject(ResponseSerializer):
    id = serializers.CharField()
    object = Const("response")
    created_at = serializers.IntegerField(help_text="Unix time, seconds.")
    status = serializers.ChoiceField(choices=STATUSES)
    background = serializers.BooleanField()
    completed_at = serializers.IntegerField(allow_null=True)
    error = ResponseErrorObject(allow_null=True)
    incomplete_details = ResponseIncompleteDetails(allow_null=True)
    instructions = serializers.CharField(allow_null=True)
    max_output_tokens = serializers.IntegerField(allow_null=True)
    max_tool_calls = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField())
    model = serializers.CharField(help_text="The model that answered (after routing).")
    output = serializers.ListField(child=output_item())
    parallel_tool_calls = serializers.BooleanField()
    previous_response_id = serializers.CharField(allow_null=True)
    prompt_cache_key = serializers.CharField(allow_null=True)
    reasoning = ResponseReasoning()
    service_tier = serializers.CharField()
    store = serializers.BooleanField()
    temperature = serializers.FloatField()
    text = ResponseTextConfig()
    tool_choice = serializers.JSONField(
        help_text='"auto", "none", "required" or `{"type": "function", "name"}`.'
    )
    tools = ResponseFunctionTool(many=True)
    top_logprobs = serializers.IntegerField()
    top_p = serializers.FloatField()
    truncation = Const("disabled")
    usage = ResponseUsage(allow_null=True, help_text="Null until the response ends.")
    user = serializers.CharField(allow_null=True)


class ResponseDeleted(ResponseSerializer):
    id = serializers.CharField()
    object = Const("response.deleted")
    deleted = serializers.BooleanField()


class ResponseItemList(ResponseSerializer):
    object = Const("list")
    data = serializers.ListField(  # type: ignore[assignment]  # OpenAI's name shadows DRF's
        child=PolymorphicProxySerializer(
            component_name="ResponseInputItem",
            serializers=[
                ResponseInputMessageItem,
                ResponseOutputMessage,
                ResponseFunctionToolCall,
                ResponseFunctionToolCallOutputItem,
            ],
            resource_type_field_name=None,
        )
    )
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


# -- stream events ------------------------------------------------------------------------------
def _lifecycle(kind: str) -> type[ResponseSerializer]:
    name = "Response" + "".join(p.title() for p in kind.split(".")[1].split("_")) + "Event"
    return type(
        name,
        (ResponseSerializer,),
        {
            "type": Const(kind),
            "sequence_number": serializers.IntegerField(),
            "response": ResponseObject(),
            "__module__": __name__,
        },
    )


ResponseCreatedEvent = _lifecycle("response.created")
ResponseInProgressEvent = _lifecycle("response.in_progress")
ResponseCompletedEvent = _lifecycle("response.completed")
ResponseIncompleteEvent = _lifecycle("response.incomplete")
ResponseFailedEvent = _lifecycle("response.failed")


class ResponseOutputItemAddedEvent(ResponseSerializer):
    type = Const("response.output_item.added")
    sequence_number = serializers.IntegerField()
    output_index = serializers.IntegerField()
    item = output_item()


class ResponseOutputItemDoneEvent(ResponseOutputItemAddedEvent):
    type = Const("response.output_item.done")
    item = output_item()


class ResponseContentPartAddedEvent(ResponseSerializer):
    type = Const("response.content_part.added")
    sequence_number = serializers.IntegerField()
    item_id = serializers.CharField()
    output_index = serializers.IntegerField()
    content_index = serializers.IntegerField()
    part = ResponseOutputText()


class ResponseContentPartDoneEvent(ResponseContentPartAddedEvent):
    type = Const("response.content_part.done")
    part = ResponseOutputText()


class ResponseTextDeltaEvent(ResponseSerializer):
    type = Const("response.output_text.delta")
    sequence_number = serializers.IntegerField()
    item_id = serializers.CharField()
    output_index = serializers.IntegerField()
    content_index = serializers.IntegerField()
    delta = serializers.CharField(allow_blank=True)
    logprobs = serializers.ListField(child=serializers.JSONField(), help_text="Always empty.")


class ResponseTextDoneEvent(ResponseSerializer):
    type = Const("response.output_text.done")
    sequence_number = serializers.IntegerField()
    item_id = serializers.CharField()
    output_index = serializers.IntegerField()
    content_index = serializers.IntegerField()
    text = serializers.CharField(allow_blank=True)
    logprobs = serializers.ListField(child=serializers.JSONField(), help_text="Always empty.")


class ResponseFunctionCallArgumentsDeltaEvent(ResponseSerializer):
    type = Const("response.function_call_arguments.delta")
    sequence_number = serializers.IntegerField()
    item_id = serializers.CharField()
    output_index = serializers.IntegerField()
    delta = serializers.CharField()


class ResponseFunctionCallArgumentsDoneEvent(ResponseSerializer):
    type = Const("response.function_call_arguments.done")
    sequence_number = serializers.IntegerField()
    item_id = serializers.CharField()
    output_index = serializers.IntegerField()
    arguments = serializers.CharField(allow_blank=True)


STREAM_EVENT = PolymorphicProxySerializer(
    component_name="ResponseStreamEvent",
    serializers=[
        ResponseCreatedEvent,
        ResponseInProgressEvent,
        ResponseOutputItemAddedEvent,
        ResponseContentPartAddedEvent,
        ResponseTextDeltaEvent,
        ResponseTextDoneEvent,
        ResponseContentPartDoneEvent,
        ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent,
        ResponseOutputItemDoneEvent,
        ResponseCompletedEvent,
        ResponseIncompleteEvent,
        ResponseFailedEvent,
    ],
    resource_type_field_name=None,
)

# -- examples -----------------------------------------------------------------------------------
CREATE_REQUEST = {
    "model": "qwen2.5-coder-0.5b-instruct",
    "instructions": "You are terse.",
    "input": "Say hello.",
    "max_output_tokens": 64,
}
TOOL_REQUEST = {
    "model": "qwen2.5-coder-0.5b-instruct",
    "input": "What is the weather in Paris?",
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ],
    "tool_choice": "auto",
}
RESPONSE = {
    "id": "resp_0d8f4c2e9a7b4b1f8e3c2a1b0c9d8e7f",
    "object": "response",
    "created_at": 1767225600,
    "status": "completed",
    "background": False,
    "completed_at": 1767225601,
    "error": None,
    "incomplete_details": None,
    "instructions": "You are terse.",
    "max_output_tokens": 64,
    "max_tool_calls": None,
    "metadata": {},
    "model": "qwen2.5-coder-0.5b-instruct",
    "output": [
        {
            "type": "message",
            "id": "msg_5b1f0c9d8e7f4c2e9a7b0d8f4c2e1a3b",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}
            ],
        }
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None},
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": 0,
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 21,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 24,
    },
    "user": None,
}
DELTA_EVENT = {
    "type": "response.output_text.delta",
    "sequence_number": 4,
    "item_id": "msg_5b1f0c9d8e7f4c2e9a7b0d8f4c2e1a3b",
    "output_index": 0,
    "content_index": 0,
    "delta": "Hello",
    "logprobs": [],
}
ITEM_LIST = {
    "object": "list",
    "data": [
        {
            "type": "message",
            "id": "msg_9a7b0d8f4c2e1a3b5b1f0c9d8e7f4c2e",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": "Say hello."}],
        }
    ],
    "first_id": "msg_9a7b0d8f4c2e1a3b5b1f0c9d8e7f4c2e",
    "last_id": "msg_9a7b0d8f4c2e1a3b5b1f0c9d8e7f4c2e",
    "has_more": False,
}
ERRORS: dict[int | tuple[int, str], OpenApiResponse] = {
    status: response for status, response in _ERRORS.items()
}
NOT_FOUND = _error(
    404,
    "No stored response with this id for this tenant (or it expired)",
    "invalid_request_error",
    "not_found",
    "Response with id 'resp_x' not found.",
)

CREATE_RESPONSES: dict[int | tuple[int, str], OpenApiResponse] = {
    (200, "application/json"): ok(
        ResponseObject,
        RESPONSE,
        "Without `stream`: one Response. With `stream: true`: server-sent events "
        "(text/event-stream), each `event: <type>` with `data: <ResponseStreamEvent>` "
        "(`sequence_number` from 0): response.created, response.in_progress, then per output "
        "item response.output_item.added, for a message response.content_part.added, "
        "response.output_text.delta…, response.output_text.done, response.content_part.done, "
        "for a function call response.function_call_arguments.delta… and .done, then "
        "response.output_item.done; finally response.completed, response.incomplete "
        "(max_output_tokens) or response.failed (an error after the stream began).",
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
RETRIEVE_RESPONSES: dict[int | tuple[int, str], OpenApiResponse] = {
    200: ok(ResponseObject, RESPONSE),
    401: ERRORS[401],
    404: NOT_FOUND,
    429: ERRORS[429],
}
DELETE_RESPONSES: dict[int | tuple[int, str], OpenApiResponse] = {
    200: ok(
        ResponseDeleted,
        {"id": RESPONSE["id"], "object": "response.deleted", "deleted": True},
    ),
    401: ERRORS[401],
    404: NOT_FOUND,
    429: ERRORS[429],
}
ITEMS_RESPONSES: dict[int | tuple[int, str], OpenApiResponse] = {
    200: ok(ResponseItemList, ITEM_LIST),
    400: ERRORS[400],
    401: ERRORS[401],
    404: NOT_FOUND,
    429: ERRORS[429],
}
