"""OpenAI's Responses API: `POST /v1/responses`, and the stored answers behind
`GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`.

A thin adapter over the chat service, as `inference.anthropic` is. The request
is translated into an OpenAI chat body (`response_plan`, which also reads the
conversation `previous_response_id` continues), run by
`services.chat_completion_create` under the endpoint name `responses` (so usage
records tell the APIs apart), and the result rendered back: a whole answer by
`chat_to_response`, a stream by `ResponseEvents` and `response_frames` (the
named SSE events, with `sequence_number`). With `store` (the default) the
answer and its conversation's input items are kept for
LLMSITE_RESPONSES_RETENTION_DAYS. Errors are OpenAI's error object, as for chat.

Every field is translated, accepted as asking for nothing (`background: false`,
`truncation: "disabled"`, `include: []`, ...) or refused by name.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework.response import Response

from inference import api, selectors, services
from inference import responses_schema as schema
from inference.api import InferenceView
from inference.serializers import MAX_MESSAGES, MAX_TOOLS
from inference.services import Completed, Streamed, StreamError
from llmsite.errors import APIError, InvalidRequest, UnsupportedParameter

ENDPOINT = "responses"
RETRIEVE_ENDPOINT = "responses.retrieve"
DELETE_ENDPOINT = "responses.delete"
ITEMS_ENDPOINT = "responses.input_items"

MAX_ITEMS = MAX_MESSAGES - 1  # a conversation's items (inherited ones included), and instructions
MAX_METADATA = 16
MAX_ID = 128

CREATE_FIELDS = {
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "metadata",
    "user",
    "store",
    "stream",
    "stream_options",
    "previous_response_id",
    "prompt_cache_key",
    "max_tool_calls",
}


def _asks_nothing(name: str, value) -> bool:
    """Whether a field llmsite does not implement was sent as its no-op."""
    if value is None:
        return True
    if name == "background":
        return value is False
    if name == "include":
        return value == []
    if name == "truncation":
        return value == "disabled"
    if name == "service_tier":
        return value in ("auto", "default")
    if name == "top_logprobs":
        return value == 0
    if name == "reasoning":
        # The served models do not reason: only "no reasoning" can be honoured.
        return (
            isinstance(value, dict)
            and set(value) <= {"effort", "summary", "generate_summary"}
            and value.get("effort") in (None, "none")
            and value.get("summary") is None
            and value.get("generate_summary") is None
        )
    return False


# Fields of OpenAI's request that llmsite knows and does not implement.
UNSUPPORTED = {
    "background",
    "background_options",
    "include",
    "truncation",
    "service_tier",
    "top_logprobs",
    "reasoning",
    "prompt",
    "conversation",
    "context_management",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
    "moderation",
    "image",
    "access_programs",
    "cyber",
    "completion_window",
    "continuation_id",
}

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


# -- request: Responses -> OpenAI chat --------------------------------------------------------
def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for '{param}': {message}", param=param, code="invalid_value"
    )


def _unsupported(message: str, param: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"{param}: {message}", param=param)


def _check_fields(obj: dict, allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            name = f"{path}.{key}" if path else key
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _string(value, param: str, *, limit: int | None = None, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _invalid("must be a non-empty string" if not empty else "must be a string", param)
    if limit is not None and len(value) > limit:
        raise _invalid(f"must be at most {limit} characters", param)
    return value


def _item_id(item: dict, prefix: str, path: str) -> str:
    if item.get("id") is None:
        return _new_id(prefix)
    return _string(item["id"], f"{path}.id", limit=MAX_ID, empty=False)


def _parts(content, path: str, *, assistant: bool) -> list[dict]:
    """A message's content as normalized parts: `input_text` (or `output_text`
    for the assistant, as OpenAI's output items carry it)."""
    kind = "output_text" if assistant else "input_text"
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            where = f"{path}.{index}"
            if not isinstance(part, dict):
                raise _invalid("must be an object", where)
            allowed = ("input_text", "output_text") if assistant else ("input_text",)
            if part.get("type") not in allowed:
                raise _unsupported(
                    f"content parts of type `{part.get('type')}` are not supported here; "
                    f"only {' and '.join(f'`{a}`' for a in allowed)}.",
                    f"{where}.type",
                )
            fields = {"type", "text"}
            if part["type"] == "output_text":
                # Citations describe the text; they change nothing the model reads.
                fields |= {"annotations", "logprobs"}
            _check_fields(part, fields, where)
            texts.append(_string(part.get("text"), f"{where}.text"))
    else:
        raise _invalid("must be a string or a list of content parts", path)
    out: list[dict] = [{"type": kind, "text": text} for text in texts]
    if assistant:
        for part in out:
            part["annotations"] = []
    return out


def _input_item(item, path: str) -> dict:
    """One input item, normalized as /input_items lists it (with an id)."""
    if not isinstance(item, dict):
        raise _invalid("must be an object", path)
    kind = item.get("type", "message")
    if kind == "message":
        _check_fields(item, {"type", "id", "role", "content", "status", "phase"}, path)
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _invalid("must be 'user', 'assistant', 'system' or 'developer'", f"{path}.role")
        if "content" not in item:
            raise _invalid("Field required", f"{path}.content")
        assistant = role == "assistant"
        return {
            "id": _item_id(item, "msg", path),
            "type": "message",
            "role": role,
            "content": _parts(item["content"], f"{path}.content", assistant=assistant),
            "status": "completed",
        }
    if kind == "function_call":
        _check_fields(item, {"type", "id", "call_id", "name", "arguments", "status"}, path)
        return {
            "id": _item_id(item, "fc", path),
            "type": "function_call",
            "call_id": _string(item.get("call_id"), f"{path}.call_id", limit=256, empty=False),
            "name": _string(item.get("name"), f"{path}.name", limit=64, empty=False),
            "arguments": _string(item.get("arguments"), f"{path}.arguments"),
            "status": "completed",
        }
    if kind == "function_call_output":
        _check_fields(item, {"type", "id", "call_id", "output", "status"}, path)
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p["text"] for p in _parts(output, f"{path}.output", assistant=False))
        return {
            "id": _item_id(item, "fco", path),
            "type": "function_call_output",
            "call_id": _string(item.get("call_id"), f"{path}.call_id", limit=256, empty=False),
            "output": _string(output, f"{path}.output"),
            "status": "completed",
        }
    raise _unsupported(
        f"input items of type `{kind}` are not supported; only `message`, `function_call` "
        "and `function_call_output`.",
        f"{path}.type",
    )


def _input_items(raw) -> list[dict]:
    if isinstance(raw, str):
        return [_input_item({"role": "user", "content": raw}, "input")]
    if not isinstance(raw, list):
        raise _invalid("must be a string or a list of input items", "input")
    if len(raw) > MAX_ITEMS:
        raise _invalid(f"at most {MAX_ITEMS} items are accepted", "input")
    return [_input_item(item, f"input.{index}") for index, item in enumerate(raw)]


def chat_messages(items: list[dict], paths: list[str]) -> list[dict]:
    """A conversation's items as chat messages: function calls join the assistant
    turn before them, and each output must answer a call of that turn."""
    messages: list[dict] = []
    open_calls: set[str] = set()
    for item, path in zip(items, paths, strict=True):
        kind = item["type"]
        if kind == "message":
            text = "".join(part["text"] for part in item["content"])
            messages.append({"role": item["role"], "content": text})
            open_calls = set()
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
                open_calls = set()
            open_calls.add(item["call_id"])
        else:
            if item["call_id"] not in open_calls:
                raise _invalid(
                    f"no function_call with call_id {item['call_id']!r} comes before this "
                    "output (outputs follow the calls they answer)",
                    f"{path}.call_id",
                )
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def _tools(tools) -> tuple[list[dict], list[dict]]:
    """Responses' flat function tools as chat tools, and as the answer echoes them."""
    if not isinstance(tools, list):
        raise _invalid("must be a list of tools", "tools")
    if len(tools) > MAX_TOOLS:
        raise _invalid(f"at most {MAX_TOOLS} tools are accepted", "tools")
    chat, echo = [], []
    for index, tool in enumerate(tools):
        where = f"tools.{index}"
        if not isinstance(tool, dict):
            raise _invalid("must be an object", where)
        if tool.get("type") != "function":
            raise _unsupported(
                f"built-in tools (`{tool.get('type')}`) are not supported; declare function "
                'tools: {"type": "function", "name", "description", "parameters"}.',
                f"{where}.type",
            )
        _check_fields(tool, {"type", "name", "description", "parameters", "strict"}, where)
        name = _string(tool.get("name"), f"{where}.name", limit=64, empty=False)
        function: dict = {"name": name}
        if tool.get("description") is not None:
            function["description"] = _string(tool["description"], f"{where}.description")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _invalid("must be a JSON Schema object", f"{where}.parameters")
        function["parameters"] = parameters or {"type": "object", "properties": {}}
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise _invalid("must be a boolean", f"{where}.strict")
            function["strict"] = strict
        chat.append({"type": "function", "function": function})
        echo.append(
            {
                "type": "function",
                "name": name,
                "description": tool.get("description"),
                "parameters": parameters,
                "strict": strict,
            }
        )
    return chat, echo


def _tool_choice(choice) -> str | dict:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        _check_fields(choice, {"type", "name"}, "tool_choice")
        _string(choice.get("name"), "tool_choice.name", limit=64, empty=False)
        return {"type": "function", "name": choice["name"]}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        raise _unsupported(
            f"tool_choice of type `{choice['type']}` is not supported; use 'auto', 'none', "
            '\'required\' or {"type": "function", "name": ...}.',
            "tool_choice",
        )
    raise _invalid(
        'must be "auto", "none", "required" or {"type": "function", "name": ...}', "tool_choice"
    )


def _text(text) -> tuple[dict, dict | None]:
    """`text` as echoed, and the chat `response_format` it asks for."""
    if not isinstance(text, dict):
        raise _invalid("must be an object", "text")
    _check_fields(text, {"format", "verbosity"}, "text")
    if text.get("verbosity") not in (None, "medium"):
        raise _unsupported("only the default verbosity (`medium`) is supported.", "text.verbosity")
    fmt = text.get("format") or {"type": "text"}
    if not isinstance(fmt, dict):
        raise _invalid("must be an object", "text.format")
    kind = fmt.get("type")
    echo = {"format": fmt, "verbosity": "medium"}
    if kind in ("text", "json_object"):
        _check_fields(fmt, {"type"}, "text.format")
        return echo, None if kind == "text" else {"type": "json_object"}
    if kind != "json_schema":
        raise _invalid("type must be 'text', 'json_object' or 'json_schema'", "text.format.type")
    _check_fields(fmt, {"type", "name", "schema", "description", "strict"}, "text.format")
    name = _string(fmt.get("name"), "text.format.name", limit=64, empty=False)
    if not isinstance(fmt.get("schema"), dict):
        raise _invalid("Field required (a JSON Schema object)", "text.format.schema")
    spec: dict = {"name": name, "schema": fmt["schema"]}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            spec[key] = fmt[key]
    echo["format"] = {
        "type": "json_schema",
        "name": name,
        "schema": fmt["schema"],
        "description": fmt.get("description"),
        "strict": fmt.get("strict"),
    }
    return echo, {"type": "json_schema", "json_schema": spec}


def _metadata(metadata) -> dict:
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise _invalid(f"must be an object of at most {MAX_METADATA} pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise _invalid(
                "keys are at most 64 characters, values strings of at most 512", "metadata"
            )
    return dict(metadata)


@dataclass
class Plan:
    """A /v1/responses request, translated: the chat body to run, the whole
    conversation's input items (to store), and what the answer echoes."""

    chat: dict
    items: list[dict]
    echo: dict
    store: bool
    tenant: object = None
    response_id: str = field(default_factory=lambda: _new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))


def _conversation_size(items: list[dict]) -> int:
    return len(json.dumps(items, ensure_ascii=False))


def response_plan(body, *, tenant) -> Plan:
    """A Responses request as a chat body; reads the stored conversation
    `previous_response_id` names. Raises an APIError (a 400 naming the field,
    or the previous response's 404)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    for key, value in body.items():
        if key in UNSUPPORTED:
            if not _asks_nothing(key, value):
                raise UnsupportedParameter(
                    f"The parameter `{key}` is not supported by this server.", param=key
                )
        elif key not in CREATE_FIELDS:
            _check_fields({key: value}, CREATE_FIELDS, "")
    if body.get("input") is None:
        raise _invalid("Field required", "input")
    new_items = _input_items(body["input"])

    previous_id = body.get("previous_response_id")
    inherited: list[dict] = []
    if previous_id is not None:
        _string(previous_id, "previous_response_id", limit=MAX_ID, empty=False)
        previous = selectors.stored_response_get(
            tenant=tenant, response_id=previous_id, param="previous_response_id"
        )
        inherited = [*previous.input_items, *previous.response.get("output", [])]
    items = [*inherited, *new_items]
    if len(items) > MAX_ITEMS:
        raise _invalid(
            f"the conversation (with previous_response_id's items) has more than {MAX_ITEMS} items",
            "input",
        )
    if _conversation_size(items) > settings.MAX_BODY_BYTES:
        raise _invalid(f"the conversation is larger than {settings.MAX_BODY_BYTES} bytes", "input")
    paths = ["previous_response_id"] * len(inherited) + [
        f"input.{index}" if isinstance(body["input"], list) else "input"
        for index in range(len(new_items))
    ]
    messages = chat_messages(items, paths)
    instructions = body.get("instructions")
    if instructions is not None:
        _string(instructions, "instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise _invalid("must hold at least one item", "input")

    chat: dict = {"messages": messages}
    if body.get("model") is not None:
        chat["model"] = body["model"]
    echo: dict = {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": previous_id,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "user": body.get("user"),
    }
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise _invalid("must be an integer of at least 1", "max_output_tokens")
        chat["max_tokens"] = max_output
    max_calls = body.get("max_tool_calls")
    if max_calls is not None and (
        isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1
    ):
        raise _invalid("must be an integer of at least 1", "max_tool_calls")
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]  # the chat serializer checks the range, by this name
            echo[name] = body[name]
    if body.get("user") is not None:
        chat["user"] = _string(body["user"], "user", limit=256)
    if body.get("prompt_cache_key") is not None:
        _string(body["prompt_cache_key"], "prompt_cache_key", limit=256)
    if body.get("metadata") is not None:
        echo["metadata"] = _metadata(body["metadata"])
    if body.get("tools") is not None:
        chat["tools"], echo["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        choice = _tool_choice(body["tool_choice"])
        echo["tool_choice"] = choice
        if isinstance(choice, dict):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif choice != "none" or chat.get("tools"):
            chat["tool_choice"] = choice
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _invalid("must be a boolean", "parallel_tool_calls")
        echo["parallel_tool_calls"] = parallel
        if chat.get("tools"):
            chat["parallel_tool_calls"] = parallel
    if body.get("text") is not None:
        echo["text"], response_format = _text(body["text"])
        if response_format is not None:
            chat["response_format"] = response_format
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise _invalid("must be a boolean", "store")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _invalid("is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict):
            raise _invalid("must be an object", "stream_options")
        # Obfuscation pads events against length side channels; none is added here.
        _check_fields(options, {"include_obfuscation"}, "stream_options")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    echo["store"] = store is not False
    return Plan(chat=chat, items=items, echo=echo, store=store is not False, tenant=tenant)


# -- response: OpenAI chat -> Responses ------------------------------------------------------
def usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    plan: Plan,
    *,
    model: str,
    status: str,
    output: list[dict],
    usage: dict | None,
    finish: str | None = None,
    error: dict | None = None,
) -> dict:
    reason = INCOMPLETE.get(finish or "")
    if status == "completed" and reason:
        status = "incomplete"
    return {
        "id": plan.response_id,
        "object": "response",
        "created_at": plan.created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": reason} if status == "incomplete" else None,
        "model": model,
        "output": output,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "top_logprobs": 0,
        "truncation": "disabled",
        "usage": usage,
        **plan.echo,
    }


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def chat_to_response(chat: dict, plan: Plan) -> dict:
    """A whole chat completion as a Response."""
    choice = chat["choices"][0]
    message = choice["message"]
    finish = choice.get("finish_reason")
    calls = message.get("tool_calls") or []
    output: list[dict] = []
    if message.get("content") or not calls:
        status = "incomplete" if finish in INCOMPLETE else "completed"
        output.append(_message_item(_new_id("msg"), message.get("content") or "", status))
    for call in calls:
        function = call["function"]
        output.append(
            _call_item(
                _new_id("fc"), call["id"], function["name"], function["arguments"], "completed"
            )
        )
    counted = chat.get("usage") or {}
    return response_object(
        plan,
        model=chat["model"],
        status="completed",
        output=output,
        usage=usage(counted.get("prompt_tokens", 0), counted.get("completion_tokens", 0)),
        finish=finish,
    )


class ResponseEvents:
    """OpenAI chat chunks in, Responses stream events out (dicts with `type` and
    `sequence_number`). A message item opens on the first text and closes when
    a function call starts; each call is a function_call item whose arguments
    come as deltas. Items keep their id from `added` to `done`."""

    def __init__(self, plan: Plan, *, model: str) -> None:
        self.plan = plan
        self.model = model
        self.sequence = 0
        self.output: list[dict] = []
        self.open: list[int] = []  # output indexes not done yet
        self.text_at: int | None = None  # the open message item's index
        self.calls: dict[int, int] = {}  # chat call index -> output index
        self.input_tokens = 0
        self.output_tokens = 0
        self.finish: str | None = None

    def _event(self, kind: str, **data) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return copy.deepcopy(event)  # later deltas change the items; events are snapshots

    def _response(self, status: str, *, error: dict | None = None) -> dict:
        counted = usage(self.input_tokens, self.output_tokens) if status != "in_progress" else None
        return response_object(
            self.plan,
            model=self.model,
            status=status,
            output=self.output if status != "in_progress" else [],
            usage=counted,
            finish=self.finish,
            error=error,
        )

    def start(self) -> list[dict]:
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def _add(self, item: dict) -> list[dict]:
        self.output.append(item)
        index = len(self.output) - 1
        self.open.append(index)
        return [self._event("response.output_item.added", output_index=index, item=item)]

    def _done(self, index: int, status: str) -> list[dict]:
        item = self.output[index]
        self.open.remove(index)
        item["status"] = status
        out = []
        if item["type"] == "message":
            self.text_at = None
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(
                self._event("response.output_text.done", **common, text=part["text"], logprobs=[])
            )
            out.append(self._event("response.content_part.done", **common, part=part))
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def _open_message(self) -> list[dict]:
        out: list[dict] = []
        for index in list(self.open):
            out += self._done(index, "completed")
        out += self._add({**_message_item(_new_id("msg"), "", "in_progress"), "content": []})
        self.text_at = len(self.output) - 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out.append(
            self._event(
                "response.content_part.added",
                item_id=self.output[self.text_at]["id"],
                output_index=self.text_at,
                content_index=0,
                part=part,
            )
        )
        self.output[self.text_at]["content"] = [part]
        return out

    def _text(self, text: str) -> list[dict]:
        out = self._open_message() if self.text_at is None else []
        assert self.text_at is not None
        item = self.output[self.text_at]
        item["content"][0]["text"] += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.text_at,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call(self, call: dict) -> list[dict]:
        out: list[dict] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.calls:
            if self.text_at is not None:
                out += self._done(self.text_at, "completed")
            item = _call_item(
                _new_id("fc"),
                call.get("id") or _new_id("call"),
                function.get("name") or "",
                "",
                "in_progress",
            )
            out += self._add(item)
            self.calls[position] = len(self.output) - 1
        pieces = function.get("arguments")
        if pieces:
            index = self.calls[position]
            self.output[index]["arguments"] += pieces
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self.output[index]["id"],
                    output_index=index,
                    delta=pieces,
                )
            )
        return out

    def feed(self, chunk: dict) -> list[dict]:
        out: list[dict] = []
        if chunk.get("usage"):
            self.input_tokens = chunk["usage"].get("prompt_tokens", self.input_tokens)
            self.output_tokens = chunk["usage"].get("completion_tokens", self.output_tokens)
        if chunk.get("model"):
            self.model = chunk["model"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def finish_events(self) -> list[dict]:
        """The end: open items done, then `response.completed` or `.incomplete`."""
        out: list[dict] = []
        if not self.output:  # an empty answer is still one (empty) message
            out += self._open_message()
        item_status = "incomplete" if self.finish in INCOMPLETE else "completed"
        for index in list(self.open):
            out += self._done(index, item_status)
        response = self._response("completed")
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=response))
        return out

    def fail(self, error: APIError) -> list[dict]:
        """`response.failed`, with the error, for a stream that broke after it began."""
        for index in list(self.open):
            self.output[index]["status"] = "incomplete"
        self.open = []
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failed = self._response("failed", error={"code": code, "message": error.message})
        return [self._event("response.failed", response=failed)]


def _frame(event: dict) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def _store(plan: Plan, response: dict) -> None:
    if plan.store:
        await sync_to_async(services.stored_response_save)(
            tenant=plan.tenant, response=response, input_items=plan.items
        )


async def response_events(stream: Streamed, plan: Plan) -> AsyncGenerator[dict, None]:
    """The stream as Responses' events, for SSE and the WebSocket alike. The
    answer is stored (with `store`) before its last event is sent, so a client
    that saw it can read it back. Closing this generator ends the service's
    stream, which frees the engine and bills what was sent."""
    events = ResponseEvents(plan, model=stream.headers.get("x-llmsite-model", ""))
    try:
        for event in events.start():
            yield event
        async for item in stream.events:
            if isinstance(item, StreamError):
                last = events.fail(item.error)
                await _store(plan, last[-1]["response"])
                for event in last:
                    yield event
                return
            for event in events.feed(item):
                yield event
        last = events.finish_events()
        await _store(plan, last[-1]["response"])
        for event in last:
            yield event
    finally:
        await stream.aclose()


async def response_frames(stream: Streamed, plan: Plan) -> AsyncIterator[bytes]:
    """Responses' SSE: `event: <type>` and `data: <event>` per event."""
    events = response_events(stream, plan)
    try:
        async for event in events:
            yield _frame(event)
    finally:
        # A client that left closes this generator: close the events (and so the
        # service's stream) now, not whenever they are collected.
        await events.aclose()


# -- stored responses: listing input items ----------------------------------------------------
ITEM_QUERY = {"limit", "order", "after", "include"}


def input_item_page(items: list[dict], query) -> dict:
    """`{"object": "list", "data", "first_id", "last_id", "has_more"}`: `limit`
    (1-100, 20), `order` (`desc` by default, as OpenAI's) and `after` (an item id)."""
    for key in query:
        if key not in ITEM_QUERY and key != "include[]":
            raise InvalidRequest(
                f"Unrecognized query parameter: {key}", param=key, code="unknown_parameter"
            )
        if key.startswith("include") and any(query.getlist(key)):
            raise UnsupportedParameter("The parameter `include` is not supported.", param=key)
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise _invalid("must be an integer from 1 to 100", "limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _invalid("must be 'asc' or 'desc'", "order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise _invalid(f"no input item has the id {after!r}", "after")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }


# -- views -----------------------------------------------------------------------------------
def respond(result: Completed | Streamed, plan: Plan) -> Response | StreamingHttpResponse:
    if isinstance(result, Completed):
        return Response(chat_to_response(result.body, plan), headers=result.headers)
    return api.respond(result, frames=lambda stream: response_frames(stream, plan))


class ResponseCreateView(InferenceView):
    endpoint = ENDPOINT

    @extend_schema(
        operation_id="createResponse",
        tags=["Responses"],
        request=schema.ResponseCreateRequest,
        responses=schema.CREATE_RESPONSES,
        examples=[
            OpenApiExample("text", request_only=True, value=schema.CREATE_REQUEST),
            OpenApiExample("tools", request_only=True, value=schema.TOOL_REQUEST),
        ],
        description=(
            "OpenAI's Responses API on the same models, routes, quotas and usage records as "
            "chat (records under `responses`). `input` is a string or items: messages "
            "(`input_text`/`output_text` parts), `function_call` and `function_call_output`; "
            "`instructions`, `max_output_tokens`, `temperature`, `top_p`, function `tools`, "
            "`tool_choice`, `parallel_tool_calls`, `text.format` (`json_schema`, `json_object`: "
            "grammar-enforced), `metadata`, `user`. With `store` (default true) the answer is "
            "kept for LLMSITE_RESPONSES_RETENTION_DAYS and `previous_response_id` continues it, "
            "function calls and outputs included. Built-in tools, `background`, `reasoning`, "
            "`include`, `truncation: auto`, `prompt` and `conversation` are a 400 naming them. "
            "With `stream: true`: server-sent events, `event: <type>` and `data:` with "
            "`sequence_number`."
        ),
    )
    async def post(self, request):
        body = await self.body(request)
        try:
            plan = await sync_to_async(response_plan)(body, tenant=request.user.tenant)
        except APIError as exc:
            # Refused before the service saw it: still one record, as any refusal.
            raise await services.request_refuse(
                principal=request.user,
                endpoint=self.endpoint,
                request_id=request._request.request_id,
                error=exc,
                body=body,
            ) from exc
        result = await services.chat_completion_create(
            principal=request.user,
            body=plan.chat,
            request_id=request._request.request_id,
            endpoint=self.endpoint,
        )
        if isinstance(result, Completed):
            answer = chat_to_response(result.body, plan)
            await _store(plan, answer)
            return Response(answer, headers=result.headers)
        return respond(result, plan)


class ResponseDetailView(InferenceView):
    endpoint = RETRIEVE_ENDPOINT

    @extend_schema(
        operation_id="retrieveResponse",
        tags=["Responses"],
        responses=schema.RETRIEVE_RESPONSES,
        description="A stored response (`store: true`) of this tenant; else a 404.",
    )
    async def get(self, request, response_id: str):
        tenant = request.user.tenant
        return api.respond(
            await services.request_read(
                principal=request.user,
                request_id=request._request.request_id,
                endpoint=RETRIEVE_ENDPOINT,
                read=lambda: (
                    selectors.stored_response_get(tenant=tenant, response_id=response_id).response
                ),
            )
        )

    @extend_schema(
        operation_id="deleteResponse",
        tags=["Responses"],
        responses=schema.DELETE_RESPONSES,
        description="Delete a stored response of this tenant; another tenant's is a 404.",
    )
    async def delete(self, request, response_id: str):
        tenant = request.user.tenant
        return api.respond(
            await services.request_read(
                principal=request.user,
                request_id=request._request.request_id,
                endpoint=DELETE_ENDPOINT,
                read=lambda: services.stored_response_delete(
                    tenant=tenant, response_id=response_id
                ),
            )
        )


class ResponseInputItemsView(InferenceView):
    endpoint = ITEMS_ENDPOINT

    @extend_schema(
        operation_id="listInputItems",
        tags=["Responses"],
        parameters=[
            OpenApiParameter("limit", int, description="1 to 100 (20)."),
            OpenApiParameter("order", str, enum=["asc", "desc"], description="desc by default."),
            OpenApiParameter("after", str, description="List the items after this item id."),
        ],
        responses=schema.ITEMS_RESPONSES,
        description=(
            "The input items of a stored response: the whole conversation it answered, "
            "the items inherited through `previous_response_id` included."
        ),
    )
    async def get(self, request, response_id: str):
        tenant = request.user.tenant
        query = request.query_params
        return api.respond(
            await services.request_read(
                principal=request.user,
                request_id=request._request.request_id,
                endpoint=ITEMS_ENDPOINT,
                read=lambda: input_item_page(
                    selectors.stored_response_get(
                        tenant=tenant, response_id=response_id
                    ).input_items,
                    query,
                ),
            )
        )
