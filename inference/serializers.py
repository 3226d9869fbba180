"""Input validation for the OpenAI-compatible endpoints.

Every request field is either supported or refused by name: a parameter
OpenAI defines that llmsite does not implement gets a 400 naming it, and an
unknown one gets OpenAI's "Unrecognized request argument" 400.
"""

from __future__ import annotations

import json
import re
import threading

from django.utils.functional import cached_property
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from inference import seed_api
from llmsite.errors import InvalidRequest, UnsupportedParameter

MAX_PROMPTS = 32
MAX_EMBEDDING_INPUTS = 256
MAX_STOP = 4
MAX_STOP_LEN = 256
MAX_MESSAGES = 512
MAX_N = 8
MAX_LOGIT_BIAS = 300
MAX_TOOLS = 128
MAX_TOOL_CALLS = 128  # in one assistant message
# Bounds on one tool's `parameters` schema: grammars and validators are built
# from it, and a huge or deeply nested one must be a 400, not a crash.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 4096
MAX_SCHEMAS_NODES = 32768  # all tools together
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_CHOICES = ("auto", "none", "required")

# A completion or chat without `model` takes the caller's default route, exactly
# as `"model": "auto"` does: an llmsite extension for the seed system's clients,
# which send none. OpenAI's SDKs always send a model, so nothing changes for them.
DEFAULT_ROUTE = "auto"

# OpenAI parameters llmsite knows about but does not implement (yet).
UNSUPPORTED = {
    "best_of",
    "suffix",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "service_tier",
    "store",
    "metadata",
    "dimensions",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
}


# Per thread: a top-level request serializer class -> its bound fields (see
# StrictSerializer.fields).
_bound_fields = threading.local()


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not declare, naming the first one."""

    @cached_property
    def fields(self):
        """The bound fields. DRF deep-copies every declared field for each new
        serializer, most of validating a request on every /v1 call (a chat
        request took 0.67 ms, 0.21 ms without the copy). A top-level
        serializer here reuses its class's fields instead, bound to it anew:
        one set per thread, since a validation runs to its end without
        yielding, so a thread never has two of one class in use at once. A
        nested serializer, bound to its parent, gets its own, as in DRF."""
        if self.parent is not None:
            return super().fields
        per_thread = _bound_fields.__dict__
        fields = per_thread.get(type(self))
        if fields is None:
            fields = per_thread[type(self)] = super().fields
        else:
            fields.serializer = self
            for field in fields.values():
                field.parent = self
        return fields

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
        for key in data:
            if key in self.fields:
                continue
            if key in UNSUPPORTED:
                raise UnsupportedParameter(
                    f"The parameter `{key}` is not supported by this server.", param=key
                )
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
        return super().to_internal_value(data)


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    )


_TOKENS = {"type": "array", "items": {"type": "integer"}}


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            _TOKENS,
            {"type": "array", "items": _TOKENS},
        ]
    }
)
class PromptField(serializers.Field):
    """A string, a list of strings, a token array, or a list of token arrays.

    Normalised to a list whose items are `str` or `list[int]`.
    """

    def __init__(self, *, max_items: int, **kwargs) -> None:
        self.max_items = max_items
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str) or (_is_int_list(data) and data):
            items = [data]
        elif isinstance(data, list) and data:
            items = data
            for index, item in enumerate(items):
                if not (isinstance(item, str) or (_is_int_list(item) and item)):
                    raise serializers.ValidationError(
                        f"item {index} must be a string or a non-empty array of token ids"
                    )
        else:
            raise serializers.ValidationError(
                "must be a string, an array of strings, or an array of token ids"
            )
        if len(items) > self.max_items:
            raise serializers.ValidationError(f"at most {self.max_items} items are accepted")
        return items

    def to_representation(self, value):
        return value


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]}
)
class StopField(serializers.Field):
    def to_internal_value(self, data):
        if data is None:
            return []
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise serializers.ValidationError("must be a string or an array of strings")
        if len(items) > MAX_STOP:
            raise serializers.ValidationError(f"at most {MAX_STOP} stop sequences are accepted")
        if any(len(s) > MAX_STOP_LEN for s in items):
            raise serializers.ValidationError(f"stop sequences are at most {MAX_STOP_LEN} chars")
        return [s for s in items if s]

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "maxProperties": MAX_LOGIT_BIAS,
    }
)
class LogitBiasField(serializers.Field):
    """OpenAI's `{"token id": bias}` map, normalised to `{int: float}`."""

    def to_internal_value(self, data):
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be an object mapping token ids to biases")
        if len(data) > MAX_LOGIT_BIAS:
            raise serializers.ValidationError(f"at most {MAX_LOGIT_BIAS} entries are accepted")
        out: dict[int, float] = {}
        for key, value in data.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise serializers.ValidationError(f"{key!r} is not a token id") from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise serializers.ValidationError(f"the bias for {key} must be a number")
            if not -100 <= value <= 100:
                raise serializers.ValidationError(f"the bias for {key} must be in [-100, 100]")
            out[token] = float(value)
        return out

    def to_representation(self, value):
        return value


class StreamOptionsSerializer(StrictSerializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class SamplingSerializer(StrictSerializer):
    model = serializers.CharField(max_length=128, required=False, default=DEFAULT_ROUTE)
    max_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    temperature = serializers.FloatField(
        min_value=0, max_value=2, required=False, allow_null=True, default=1.0
    )
    top_p = serializers.FloatField(
        min_value=0, max_value=1, required=False, allow_null=True, default=1.0
    )
    n = serializers.IntegerField(
        min_value=1, max_value=MAX_N, required=False, allow_null=True, default=1
    )
    stop = StopField(required=False, allow_null=True, default=list)
    seed = serializers.IntegerField(required=False, allow_null=True, default=None)
    presence_penalty = serializers.FloatField(
        min_value=-2, max_value=2, required=False, allow_null=True, default=0.0
    )
    frequency_penalty = serializers.FloatField(
        min_value=-2, max_value=2, required=False, allow_null=True, default=0.0
    )
    logit_bias = LogitBiasField(required=False, allow_null=True, default=dict)
    stream = serializers.BooleanField(required=False, allow_null=True, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True, default=None)
    user = serializers.CharField(
        max_length=256, required=False, allow_blank=True, allow_null=True, default=""
    )

    def validate(self, attrs):
        defaults = {
            "temperature": 1.0,
            "top_p": 1.0,
            "n": 1,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "stream": False,
            "user": "",
            "stop": [],
            "logit_bias": {},
        }
        for name, value in defaults.items():
            if attrs.get(name) is None:
                attrs[name] = value
        if attrs.get("stream_options") and not attrs["stream"]:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        attrs["include_usage"] = bool((attrs.get("stream_options") or {}).get("include_usage"))
        return attrs


class CompletionRequestSerializer(SamplingSerializer):
    prompt = PromptField(max_items=MAX_PROMPTS)
    logprobs = serializers.IntegerField(min_value=0, max_value=5, required=False, allow_null=True)
    echo = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if attrs.get("echo") and attrs.get("logprobs") is not None:
            raise UnsupportedParameter(
                "`logprobs` together with `echo` (prompt logprobs) is not supported.",
                param="echo",
            )
        return attrs


class ContentPartSerializer(StrictSerializer):
    type = serializers.CharField()
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)

    def to_internal_value(self, data):
        if isinstance(data, dict) and data.get("type") not in (None, "text"):
            raise UnsupportedParameter(
                f"Content parts of type `{data.get('type')}` are not supported; only `text`.",
                param="content.type",
            )
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "enum": ["text"]},
                        "text": {"type": "string"},
                    },
                    "required": ["type", "text"],
                },
            },
        ]
    }
)
class ContentField(serializers.Field):
    def to_internal_value(self, data):
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            parts = []
            for index, part in enumerate(data):
                serializer = ContentPartSerializer(data=part)
                if not serializer.is_valid():
                    raise serializers.ValidationError({index: serializer.errors})
                parts.append(serializer.validated_data["text"])
            return "".join(parts)
        raise serializers.ValidationError("must be a string or an array of text parts")

    def to_representation(self, value):
        return value


def _tools_error(path: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for '{path}': {message}", param="tools", code="invalid_value"
    )


# Keywords that move reference resolution somewhere neither the grammar
# converter nor the validator would agree on.
_UNSUPPORTED_KEYWORDS = {
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "$anchor",
}


def _resolves(schema, ref: str) -> bool:
    """Whether a local `$ref` (a JSON pointer after '#') names a part of `schema`."""
    node = schema
    for token in ref[1:].split("/")[1:] if ref != "#" else ():
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return ref == "#" or ref.startswith("#/")


def _schema_size(schema, path: str) -> int:
    """The number of JSON nodes in a schema; a 400 when it nests too deep or grows too big."""
    nodes = 0
    stack = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise _tools_error(path, f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if nodes > MAX_SCHEMA_NODES:
            raise _tools_error(path, f"the schema has more than {MAX_SCHEMA_NODES} nodes")
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                raise _tools_error(path, "only local `$ref`s (starting with '#') are allowed")
            if ref is not None and not _resolves(schema, ref):
                raise _tools_error(path, f"`$ref` {ref!r} points at nothing in the schema")
            for key in _UNSUPPORTED_KEYWORDS.intersection(node):
                raise _tools_error(path, f"the keyword `{key}` is not supported")
            if node is not schema and "$id" in node:
                raise _tools_error(path, "`$id` is only allowed at the schema's root")
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    return nodes


def _tool_parameters(value, path: str) -> dict:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(value, dict):
        raise _tools_error(path, "must be a JSON Schema object")
    kind = value.get("type", "object")
    if kind != "object":
        raise _tools_error(path, f"the schema must have type 'object', got {kind!r}")
    try:
        validator_for(value).check_schema(value)
    except SchemaError as exc:
        raise _tools_error(path, f"not a valid JSON Schema: {exc.message}") from None
    return {"type": "object", **value}


@extend_schema_field(
    {
        "type": "array",
        "maxItems": MAX_TOOLS,
        "items": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "function": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": TOOL_NAME.pattern},
                        "description": {"type": "string"},
                        "parameters": {"type": "object"},
                        "strict": {"type": "boolean", "nullable": True},
                    },
                    "required": ["name"],
                },
            },
            "required": ["type", "function"],
        },
    }
)
class ToolsField(serializers.Field):
    """OpenAI's `tools`: function declarations, normalized to plain dicts.

    Every problem is a 400 with param `tools` whose message names the entry
    (`tools[0].function.name`). `parameters` defaults to an empty object schema.
    """

    def to_internal_value(self, data):
        if not isinstance(data, list):
            raise _tools_error("tools", "must be an array of tools")
        if not data:
            raise _tools_error("tools", "must hold at least one tool")
        if len(data) > MAX_TOOLS:
            raise _tools_error("tools", f"at most {MAX_TOOLS} tools are accepted")
        tools, names, nodes = [], set(), 0
        for index, tool in enumerate(data):
            path = f"tools[{index}]"
            if not isinstance(tool, dict):
                raise _tools_error(path, "must be an object")
            for key in tool:
                if key not in ("type", "function"):
                    raise _tools_error(f"{path}.{key}", "unknown field")
            if tool.get("type") != "function":
                raise _tools_error(f"{path}.type", "must be 'function'")
            function = tool.get("function")
            if not isinstance(function, dict):
                raise _tools_error(f"{path}.function", "must be an object")
            for key in function:
                if key not in ("name", "description", "parameters", "strict"):
                    raise _tools_error(f"{path}.function.{key}", "unknown field")
            name = function.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                raise _tools_error(
                    f"{path}.function.name",
                    "must be 1 to 64 letters, digits, underscores or dashes",
                )
            if name in names:
                raise _tools_error(f"{path}.function.name", f"the name {name!r} is repeated")
            names.add(name)
            normalized: dict = {"name": name}
            description = function.get("description")
            if description is not None:
                if not isinstance(description, str):
                    raise _tools_error(f"{path}.function.description", "must be a string")
                normalized["description"] = description
            parameters = function.get("parameters")
            if parameters is None:
                parameters = {"type": "object", "properties": {}}
            nodes += _schema_size(parameters, f"{path}.function.parameters")
            if nodes > MAX_SCHEMAS_NODES:
                raise _tools_error(
                    "tools", f"the tools' schemas have more than {MAX_SCHEMAS_NODES} nodes"
                )
            normalized["parameters"] = _tool_parameters(parameters, f"{path}.function.parameters")
            strict = function.get("strict")
            if strict is not None:
                if not isinstance(strict, bool):
                    raise _tools_error(f"{path}.function.strict", "must be a boolean")
                normalized["strict"] = strict
            tools.append({"type": "function", "function": normalized})
        return tools

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": list(TOOL_CHOICES)},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                    },
                },
                "required": ["type", "function"],
            },
        ]
    }
)
class ToolChoiceField(serializers.Field):
    """`"auto"`, `"none"`, `"required"`, or `{"type": "function", "function": {"name"}}`."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            if data not in TOOL_CHOICES:
                raise serializers.ValidationError(
                    f"must be one of {', '.join(TOOL_CHOICES)} or a function"
                )
            return data
        if (
            isinstance(data, dict)
            and set(data) == {"type", "function"}
            and data["type"] == "function"
            and isinstance(data["function"], dict)
            and set(data["function"]) == {"name"}
            and isinstance(data["function"]["name"], str)
        ):
            return {"type": "function", "function": {"name": data["function"]["name"]}}
        raise serializers.ValidationError(
            'must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
        )

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "array",
        "maxItems": MAX_TOOL_CALLS,
        "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "type": {"type": "string", "enum": ["function"]},
                "function": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "arguments": {"type": "string"},
                    },
                    "required": ["name", "arguments"],
                },
            },
            "required": ["id", "type", "function"],
        },
    }
)
class ToolCallsField(serializers.Field):
    """An assistant message's earlier `tool_calls`, normalized; `arguments` stays JSON text."""

    def to_internal_value(self, data):
        if not isinstance(data, list):
            raise serializers.ValidationError("must be an array of tool calls")
        if len(data) > MAX_TOOL_CALLS:
            raise serializers.ValidationError(f"at most {MAX_TOOL_CALLS} tool calls are accepted")
        calls = []
        for index, call in enumerate(data):
            function = call.get("function") if isinstance(call, dict) else None
            if (
                not isinstance(function, dict)
                or not set(call) <= {"id", "type", "function"}
                or call.get("type", "function") != "function"
                or not isinstance(call.get("id"), str)
                or not call["id"]
                or len(call["id"]) > 256
            ):
                raise serializers.ValidationError(
                    {index: 'must be {"id", "type": "function", "function": {"name", "arguments"}}'}
                )
            name, arguments = function.get("name"), function.get("arguments", "{}")
            if not isinstance(name, str) or not name or len(name) > 64:
                raise serializers.ValidationError({index: "function.name must be a tool's name"})
            if isinstance(arguments, dict):  # an object is taken for its JSON text
                arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
            if not isinstance(arguments, str):
                raise serializers.ValidationError({index: "function.arguments must be a string"})
            calls.append(
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        return calls

    def to_representation(self, value):
        return value


class MessageSerializer(StrictSerializer):
    ROLES = ("system", "developer", "user", "assistant", "tool")

    role = serializers.CharField()
    content = ContentField(required=False, allow_null=True)
    name = serializers.CharField(max_length=64, required=False)
    refusal = serializers.CharField(required=False, allow_null=True)
    tool_calls = ToolCallsField(required=False, allow_null=True)
    tool_call_id = serializers.CharField(max_length=256, required=False)

    def validate_role(self, value):
        if value == "function":
            raise UnsupportedParameter(
                "Messages with role `function` (the deprecated `functions` API) are not "
                "supported; use `tools` and messages with role `tool`.",
                param="role",
            )
        if value not in self.ROLES:
            raise serializers.ValidationError(f"must be one of {', '.join(self.ROLES)}")
        return "system" if value == "developer" else value

    def validate(self, attrs):
        role = attrs["role"]
        if not attrs.get("tool_calls"):
            attrs.pop("tool_calls", None)
        if role != "assistant" and "tool_calls" in attrs:
            raise serializers.ValidationError({"tool_calls": "only assistant messages carry it"})
        if role == "tool" and "tool_call_id" not in attrs:
            raise serializers.ValidationError({"tool_call_id": "is required in a tool message"})
        if role != "tool" and "tool_call_id" in attrs:
            raise serializers.ValidationError({"tool_call_id": "only tool messages carry it"})
        if attrs.get("content") is None:
            if "tool_calls" not in attrs:
                raise serializers.ValidationError({"content": "This field is required."})
            # An assistant turn that only called tools: templates test content for truth.
            attrs["content"] = ""
        return attrs


class JsonSchemaSerializer(StrictSerializer):
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True)
    schema = serializers.DictField(required=False, default=dict)
    strict = serializers.BooleanField(required=False, allow_null=True)


class ResponseFormatSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=["text", "json_object", "json_schema"])
    json_schema = JsonSchemaSerializer(required=False)

    def validate(self, attrs):
        if attrs["type"] == "json_schema" and "json_schema" not in attrs:
            raise serializers.ValidationError(
                {"json_schema": "is required when type is json_schema"}
            )
        return attrs


class ChatCompletionRequestSerializer(SamplingSerializer):
    messages = serializers.ListField(
        child=MessageSerializer(), min_length=1, max_length=MAX_MESSAGES
    )
    max_completion_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    logprobs = serializers.BooleanField(required=False, allow_null=True, default=False)
    top_logprobs = serializers.IntegerField(
        min_value=0, max_value=20, required=False, allow_null=True
    )
    response_format = ResponseFormatSerializer(required=False, allow_null=True)
    tools = ToolsField(required=False, allow_null=True)
    tool_choice = ToolChoiceField(required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        self._validate_tools(attrs)
        if attrs.get("max_completion_tokens") is not None:
            if attrs.get("max_tokens") is not None:
                raise InvalidRequest(
                    "Set either 'max_tokens' or 'max_completion_tokens', not both.",
                    param="max_tokens",
                    code="invalid_value",
                )
            attrs["max_tokens"] = attrs["max_completion_tokens"]
        if attrs.get("top_logprobs") is not None and not attrs.get("logprobs"):
            raise InvalidRequest(
                "'top_logprobs' requires 'logprobs' to be true.",
                param="top_logprobs",
                code="invalid_value",
            )
        return attrs

    @staticmethod
    def _validate_tools(attrs) -> None:
        """With tools: `tool_choice` defaults to "auto", `parallel_tool_calls` to
        true. Without: the three stay None unless sent, so that nothing the
        client did not send is forwarded to a remote backend (OpenAI refuses
        `parallel_tool_calls` without tools). The choice must name a declared
        tool, and a tool message must answer a call of the assistant message
        before it. `inference.tools.tool_request` reads the result.
        """
        tools = attrs.get("tools") or None
        attrs["tools"] = tools
        choice = attrs.get("tool_choice")
        if choice not in (None, "none") and not tools:
            raise InvalidRequest(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                "'tools' are specified.",
                param="tool_choice",
                code="invalid_value",
            )
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            if name not in {tool["function"]["name"] for tool in tools}:
                raise InvalidRequest(
                    f"Invalid value for 'tool_choice': no tool named {name!r} is declared "
                    "in 'tools'.",
                    param="tool_choice",
                    code="invalid_value",
                )
        if tools:
            attrs["tool_choice"] = "auto" if choice is None else choice
            if attrs.get("parallel_tool_calls") is None:
                attrs["parallel_tool_calls"] = True
        else:
            attrs["tool_choice"] = choice
            attrs["parallel_tool_calls"] = attrs.get("parallel_tool_calls")
        call_ids: set[str] = set()
        for index, message in enumerate(attrs["messages"]):
            if message["role"] == "tool":
                if message["tool_call_id"] not in call_ids:
                    raise InvalidRequest(
                        f"Invalid value for 'messages[{index}]': a message with role 'tool' "
                        "must answer a call in the 'tool_calls' of the assistant message "
                        "before it.",
                        param="messages",
                        code="invalid_value",
                    )
                continue
            call_ids = {call["id"] for call in message.get("tool_calls") or ()}


class EmbeddingRequestSerializer(StrictSerializer):
    model = serializers.CharField(max_length=128)
    input = PromptField(max_items=MAX_EMBEDDING_INPUTS)
    encoding_format = serializers.ChoiceField(
        choices=["float", "base64"], required=False, default="float"
    )
    user = serializers.CharField(max_length=256, required=False, allow_blank=True, default="")

    def validate_input(self, value):
        for index, item in enumerate(value):
            if isinstance(item, str) and not item:
                raise serializers.ValidationError(f"item {index} is an empty string")
        return value


# -- /v1/batch, /v1/compare, /v1/analyze ------------------------------------------------
# The request serializer of each URL a batch item may name.
BATCH_URLS = {
    "/v1/chat/completions": ChatCompletionRequestSerializer,
    "/v1/completions": CompletionRequestSerializer,
    "/v1/embeddings": EmbeddingRequestSerializer,
}
DEFAULT_BATCH_CONCURRENCY = 4
MIN_COMPARE_MODELS = 2
MAX_COMPARE_MODELS = 8
MAX_ANALYZE_CHARS = 8000
ANALYZE_TASKS = ("sentiment", "keywords", "summary")


class BatchItemSerializer(StrictSerializer):
    """One batch item: the body of a chat, completion or embedding request, and its URL.

    An invalid item is that item's 400 (the other items still run); its error
    names the body's field (`stream`, `messages[0].role`) as a single call's
    would, or the item's own `url` / `custom_id`.
    """

    custom_id = serializers.CharField(max_length=128, required=False, allow_null=True, default=None)
    url = serializers.ChoiceField(choices=list(BATCH_URLS))
    body = serializers.DictField()

    def validate(self, attrs):
        body = attrs["body"]
        # Checked before the body's own serializer: embeddings would call it an
        # unknown argument, chat and completions would accept it.
        if body.get("stream"):
            raise UnsupportedParameter(
                "Streaming is not available inside a batch; each item's response is "
                "returned whole.",
                param="stream",
            )
        serializer = BATCH_URLS[attrs["url"]](data=body)
        serializer.is_valid(raise_exception=True)
        attrs["data"] = dict(serializer.validated_data)
        return attrs


class SeedBatchItemSerializer(serializers.Serializer):
    """Schema only: a batch item in the seed system's (LLM-Runner-Router's) form.

    Any other /v1/completions field may be added; with `messages` instead of
    `prompt` the item is a chat. Validated as that request by the batch.
    """

    custom_id = serializers.CharField(max_length=128, required=False)
    prompt = PromptField(max_items=MAX_PROMPTS, required=False)
    messages = serializers.ListField(child=MessageSerializer(), required=False)
    max_tokens = serializers.IntegerField(
        min_value=1, required=False, default=seed_api.SEED_DEFAULTS["max_tokens"]
    )
    temperature = serializers.FloatField(
        min_value=0, max_value=2, required=False, default=seed_api.SEED_DEFAULTS["temperature"]
    )
    model = serializers.CharField(max_length=128, required=False, default=DEFAULT_ROUTE)


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="BatchItemEitherForm",
        serializers=[BatchItemSerializer, SeedBatchItemSerializer],
        resource_type_field_name=None,
        many=True,
    )
)
class BatchItemsField(serializers.ListField):
    """The items stay raw JSON here: each one is validated on its own, as its own request."""

    child = serializers.JSONField()

    def to_internal_value(self, data):
        from django.conf import settings

        items = super().to_internal_value(data)
        limit = settings.LLMSITE_BATCH_MAX
        if len(items) > limit:
            raise serializers.ValidationError(
                f"at most {limit} requests are accepted in one batch, got {len(items)}"
            )
        form = seed_api.batch_form(items)
        if form == "mixed":
            raise serializers.ValidationError(
                "items are either all {url, body} (llmsite) or all {prompt, ...} "
                "(LLM-Runner-Router), not both in one batch"
            )
        if form == "seed":
            return [seed_api.batch_item_from_seed(item) for item in items]
        return items


class BatchRequestSerializer(StrictSerializer):
    """Up to LLMSITE_BATCH_MAX requests, run at most `concurrency` at a time.

    The items are llmsite's `{custom_id, url, body}` or, all of them, the seed
    system's `{prompt, max_tokens, temperature, ...}`; those are validated as
    /v1/completions items (see seed_api.batch_item_from_seed).
    """

    requests = BatchItemsField(min_length=1)
    concurrency = serializers.IntegerField(
        min_value=1, required=False, allow_null=True, default=DEFAULT_BATCH_CONCURRENCY
    )


@extend_schema_field(
    {
        "type": "object",
        "description": (
            "LLM-Runner-Router's form: the sampling parameters for every model, under its "
            "router's names (`maxTokens`, `topP`, `stopSequences`, `frequencyPenalty`, "
            "`presencePenalty`) or OpenAI's. A body with `options` gets the seed's "
            "`comparison` answer."
        ),
        "properties": {
            "maxTokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "topP": {"type": "number", "minimum": 0, "maximum": 1},
            "stopSequences": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "seed": {"type": "integer"},
            "frequencyPenalty": {"type": "number", "minimum": -2, "maximum": 2},
            "presencePenalty": {"type": "number", "minimum": -2, "maximum": 2},
        },
        "additionalProperties": True,
    }
)
class SeedOptionsField(serializers.Field):
    """Schema only: CompareRequestSerializer reads `options` before validating."""

    def to_internal_value(self, data):
        return data

    def to_representation(self, value):
        return value


class CompareRequestSerializer(SamplingSerializer):
    """One prompt (a completion) or one conversation (a chat) for 2 to 8 models.

    The sampling fields are the same for every model, so a bad one is the
    whole request's 400; only what depends on the model (unknown model, quota,
    context length) fails that model's entry. `n`, `stream` and
    `stream_options` are refused: one whole text per model.
    """

    model = None
    n = None
    stream = None
    stream_options = None

    models = serializers.ListField(
        child=serializers.CharField(max_length=128),
        min_length=MIN_COMPARE_MODELS,
        max_length=MAX_COMPARE_MODELS,
    )
    prompt = serializers.CharField(required=False, trim_whitespace=False)
    messages = serializers.ListField(
        child=MessageSerializer(), min_length=1, max_length=MAX_MESSAGES, required=False
    )
    # Read in to_internal_value; declared for the schema.
    options = SeedOptionsField(required=False)

    def validate_models(self, value):
        if len(set(value)) != len(value):
            raise serializers.ValidationError("each model may be named only once")
        return value

    def to_internal_value(self, data):
        if not isinstance(data, dict) or "options" not in data:
            return super().to_internal_value(data)
        # The seed system's form: the sampling fields for every model in `options`,
        # under its router's names or OpenAI's. They are checked as the same fields
        # at the top level would be, and an error names the option as it was sent.
        if "prompt" not in data and "messages" not in data:
            raise InvalidRequest("`prompt` is required.", param="prompt", code="invalid_value")
        data = dict(data)
        sent = _seed_options(data.pop("options"), top_level=data)
        data.update({field: value for field, (_, value) in sent.items()})
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if isinstance(exc.detail, dict):
                exc.detail = {
                    (f"options.{sent[key][0]}" if key in sent else key): value
                    for key, value in exc.detail.items()
                }
            raise

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if ("prompt" in attrs) == ("messages" in attrs):
            raise InvalidRequest(
                "Send either `prompt` (a completion) or `messages` (a chat), not both.",
                param="prompt" if "prompt" in attrs else "messages",
                code="invalid_value",
            )
        return attrs


def _seed_options(options, *, top_level: dict) -> dict[str, tuple[str, object]]:
    """A seed compare's `options` as {sampling field: (option name, value)}."""
    if not isinstance(options, dict):
        raise InvalidRequest(
            "`options` must be an object of sampling parameters.",
            param="options",
            code="invalid_type",
        )
    out: dict[str, tuple[str, object]] = {}
    for name, value in options.items():
        param = f"options.{name}"
        if name in seed_api.SEED_UNSUPPORTED_OPTIONS:
            raise UnsupportedParameter(
                f"The option `{name}` is not supported by this server.", param=param
            )
        field = seed_api.SEED_OPTION_FIELDS.get(name)
        if field is None:
            raise InvalidRequest(
                f"Unrecognized option supplied: {name}", param=param, code="unknown_parameter"
            )
        if field in top_level or field in out:
            raise InvalidRequest(
                f"`{field}` is set twice; send it once, at the top level or in `options`.",
                param=param,
                code="invalid_value",
            )
        out[field] = (name, value)
    return out


@extend_schema_field(
    {
        "type": "array",
        "items": {"$ref": "#/components/schemas/TasksEnum"},
        "minItems": 1,
        "description": "LLM-Runner-Router's name for `tasks`.",
    }
)
class AnalysisTypesField(serializers.ListField):
    """`tasks` under the seed's name; its schema reuses the tasks' enum (one name for one set)."""


class AnalyzeRequestSerializer(StrictSerializer):
    """A text to analyze, the tasks wanted (all by default) and the model or alias.

    `analysis_types` is the seed system's name for `tasks`.
    """

    text = serializers.CharField(max_length=MAX_ANALYZE_CHARS, trim_whitespace=False)
    tasks = serializers.ListField(
        child=serializers.ChoiceField(choices=list(ANALYZE_TASKS)),
        min_length=1,
        required=False,
        default=lambda: list(ANALYZE_TASKS),
    )
    analysis_types = AnalysisTypesField(
        child=serializers.ChoiceField(choices=list(ANALYZE_TASKS)), min_length=1, required=False
    )
    model = serializers.CharField(max_length=128, required=False, default=DEFAULT_ROUTE)
    user = serializers.CharField(max_length=256, required=False, allow_blank=True, default="")

    def validate(self, attrs):
        seed_types = attrs.pop("analysis_types", None)
        if seed_types is not None:
            if "tasks" in self.initial_data:
                raise InvalidRequest(
                    "Send either `tasks` or `analysis_types` (its LLM-Runner-Router name), "
                    "not both.",
                    param="analysis_types",
                    code="invalid_value",
                )
            attrs["tasks"] = self.validate_tasks(seed_types)
        return attrs

    def validate_text(self, value):
        if not value.strip():
            raise serializers.ValidationError("must not be blank")
        return value

    def validate_tasks(self, value):
        # Duplicates are harmless; keep the canonical order for the schema and output.
        return [task for task in ANALYZE_TASKS if task in value]
