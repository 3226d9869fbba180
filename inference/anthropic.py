"""Anthropic's Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`.

A thin adapter over the chat service. The request is translated into an OpenAI
chat body (`messages_to_chat`), run by `services.chat_completion_create` under
the endpoint name `messages` (so usage records tell the APIs apart), and the
result translated back: a whole answer by `chat_to_message`, a stream by
`MessageEvents` and `message_frames` (Anthropic's named SSE events). Errors
keep their status and render in Anthropic's shape (`error_body`).

Every field is translated or refused by name; `cache_control` hints are the
one thing accepted and ignored (prompt caching is the engine's own business).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.response import Response

from accounts.authentication import AnthropicApiKeyAuthentication, JWTTenantAuthentication
from inference import anthropic_schema as schema
from inference import api, services
from inference.api import InferenceView
from inference.services import Completed, Streamed, StreamError
from llmsite.errors import APIError, InvalidRequest, UnsupportedParameter, internal_error
from llmsite.errors import to_api_error as _to_api_error

ENDPOINT = "messages"
COUNT_ENDPOINT = "messages.count_tokens"

# Fields of Anthropic's request that llmsite knows and does not implement.
UNSUPPORTED = {
    "top_k",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "inference_geo",
    "output_config",
    "output_format",
    "diagnostics",
    "speed",
    "user_profile_id",
    "workspace_id",
}
CREATE_FIELDS = {
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "metadata",
    "tools",
    "tool_choice",
}
COUNT_FIELDS = {"model", "messages", "system", "tools", "tool_choice"}

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

# An APIError's HTTP status as Anthropic names it.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# -- errors ----------------------------------------------------------------------------------
def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(err: APIError) -> dict:
    """`{"type": "error", "error": {"type", "message"}}` for an APIError."""
    return {"type": "error", "error": {"type": error_type(err.status), "message": err.message}}


def exception_handler(exc: Exception, context: dict) -> Response:
    """llmsite's one renderer, in Anthropic's shape: same statuses and headers."""
    from llmsite.errors import exception_handler as openai_handler

    err = _to_api_error(exc)
    if err is None:
        response = openai_handler(exc, context)  # logs it, as for every API
        err = internal_error()
        return Response(error_body(err), status=response.status_code)
    headers = dict(err.headers)
    body = error_body(err)
    request = context.get("request")
    request_id = getattr(getattr(request, "_request", None), "request_id", "")
    if request_id:
        body["request_id"] = request_id
    return Response(body, status=err.status, headers=headers)


# -- request: Anthropic -> OpenAI chat ---------------------------------------------------------
def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code="invalid_value")


def _check_fields(obj: dict, allowed: set[str], path: str) -> None:
    for key in obj:
        if key in allowed or key == "cache_control":
            continue
        name = f"{path}.{key}" if path else key
        if not path and key in UNSUPPORTED:
            raise UnsupportedParameter(
                f"The parameter `{key}` is not supported by this server.", param=key
            )
        raise InvalidRequest(f"{name}: Extra inputs are not permitted", param=name)


def _text_block(block, where: str) -> str:
    if not isinstance(block, dict):
        raise _invalid("must be an object", where)
    if block.get("type") != "text":
        raise UnsupportedParameter(
            f"{where}.type: content blocks of type `{block.get('type')}` are not supported "
            "here; only `text`.",
            param=f"{where}.type",
        )
    _check_fields(block, {"type", "text", "citations"}, where)
    if not isinstance(block.get("text"), str):
        raise _invalid("Field required", f"{where}.text")
    if block.get("citations"):
        raise UnsupportedParameter(
            f"{where}.citations: citations are not supported.", param=f"{where}.citations"
        )
    return block["text"]


def _text_of(content, path: str) -> str:
    """A string, or a list of text blocks, as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid("must be a string or a list of text blocks", path)
    return "".join(_text_block(block, f"{path}.{index}") for index, block in enumerate(content))


def _user_turn(content, path: str) -> list[dict]:
    """A user turn: its `tool_result` blocks as tool messages (first: they answer the
    assistant's calls), then its text as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise _invalid("must be a string or a list of content blocks", path)
    tools: list[dict] = []
    texts: list[str] = []
    for index, block in enumerate(content):
        where = f"{path}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            _check_fields(block, {"type", "tool_use_id", "content", "is_error"}, where)
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise _invalid("Field required", f"{where}.tool_use_id")
            text = _text_of(block.get("content", ""), f"{where}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            texts.append(_text_block(block, where))
    out = tools
    if texts or not tools:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def _assistant_turn(content, path: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _invalid("must be a string or a list of content blocks", path)
    texts: list[str] = []
    calls: list[dict] = []
    for index, block in enumerate(content):
        where = f"{path}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":
            _check_fields(block, {"type", "id", "name", "input"}, where)
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _invalid("`id` and `name` are required", where)
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise _invalid("must be an object", f"{where}.input")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": json.dumps(arguments, ensure_ascii=False),
                    },
                }
            )
        else:
            texts.append(_text_block(block, where))
    message: dict = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools, path: str = "tools") -> list[dict]:
    if not isinstance(tools, list):
        raise _invalid("must be a list of tools", path)
    out = []
    for index, tool in enumerate(tools):
        where = f"{path}.{index}"
        if not isinstance(tool, dict):
            raise _invalid("must be an object", where)
        if tool.get("type") not in (None, "custom"):
            raise UnsupportedParameter(
                f"{where}.type: server tools (`{tool.get('type')}`) are not supported; "
                "declare client tools with `name`, `description` and `input_schema`.",
                param=f"{where}.type",
            )
        _check_fields(tool, {"type", "name", "description", "input_schema"}, where)
        if "input_schema" not in tool:
            raise _invalid("Field required", f"{where}.input_schema")
        function: dict = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice) -> tuple[str | dict, bool | None]:
    """Anthropic's tool_choice as OpenAI's, and `parallel_tool_calls` (None: unsaid)."""
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _invalid(
            "must be {type: auto | any | tool | none} (with `name` for tool)", "tool_choice"
        )
    kind = choice["type"]
    allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    _check_fields(choice, allowed, "tool_choice")
    disable = choice.get("disable_parallel_tool_use")
    parallel = None if disable is None else not disable
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _invalid("Field required", "tool_choice.name")
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[kind], parallel


def messages_to_chat(body, *, count_only: bool = False) -> dict:
    """An Anthropic Messages request as an OpenAI chat body (validated further,
    with everything else, by the chat serializer). Raises InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    _check_fields(body, COUNT_FIELDS if count_only else CREATE_FIELDS, "")
    if "model" not in body:
        raise _invalid("Field required", "model")
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _invalid("Field required", "max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _invalid("must be an integer of at least 1", "max_tokens")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _invalid("must be a non-empty list of messages", "messages")
    messages: list[dict] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for index, message in enumerate(raw):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _invalid("must be an object", where)
        _check_fields(message, {"role", "content"}, where)
        if "content" not in message:
            raise _invalid("Field required", f"{where}.content")
        role = message.get("role")
        if role == "user":
            messages.extend(_user_turn(message["content"], f"{where}.content"))
        elif role == "assistant":
            messages.append(_assistant_turn(message["content"], f"{where}.content"))
        else:
            raise _invalid("must be 'user' or 'assistant'", f"{where}.role")
    chat: dict = {"model": body["model"], "messages": messages}
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        choice, parallel = _tool_choice(body["tool_choice"])
        if choice != "none" or "tools" in chat:
            chat["tool_choice"] = choice
        if parallel is not None and "tools" in chat:
            chat["parallel_tool_calls"] = parallel
    if count_only:
        return chat
    chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences") is not None:
        chat["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("must be an object", "metadata")
        _check_fields(metadata, {"user_id"}, "metadata")
        if metadata.get("user_id") is not None:
            chat["user"] = metadata["user_id"]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# -- response: OpenAI chat -> Anthropic ------------------------------------------------------
def message_id(chat_id: str) -> str:
    return "msg_" + (chat_id.rsplit("-", 1)[-1] or uuid.uuid4().hex)


def stop_reason(finish_reason: str | None, stop_sequence: str | None = None) -> str:
    if stop_sequence is not None and finish_reason in (None, "stop"):
        return "stop_sequence"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def _usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _tool_input(arguments: str):
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def chat_to_message(chat: dict, stop_sequence: str | None = None) -> dict:
    """A whole chat completion as an Anthropic Message; `stop_sequence` is the
    request's stop string that ended it, if one did (OpenAI's shape cannot say)."""
    choice = chat["choices"][0]
    message = choice["message"]
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": _tool_input(call["function"]["arguments"]),
            }
        )
    usage = chat.get("usage") or {}
    return {
        "id": message_id(chat["id"]),
        "type": "message",
        "role": "assistant",
        "model": chat["model"],
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), stop_sequence),
        "stop_sequence": stop_sequence,
        "usage": _usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
    }


class MessageEvents:
    """OpenAI chat chunks in, Anthropic stream events out, as (name, data) pairs.

    `feed(chunk)` and `finish()` return the events a chunk (or the end) makes:
    a text block opens on the first text and closes when a tool call starts;
    each call is a `tool_use` block whose arguments come as `input_json_delta`.
    """

    def __init__(self, *, input_tokens: int) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = 0
        self.started = False
        self.finish_reason: str | None = None
        self._block: int = -1  # the open block's index, -1 when none
        self._kind: str | None = None  # "text" or "tool_use"
        self._calls: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._next = 0

    def start(self, chunk: dict) -> list[tuple[str, dict]]:
        self.started = True
        message = {
            "id": message_id(chunk.get("id", "")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(self.input_tokens, 0),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[tuple[str, dict]]:
        if self._block < 0:
            return []
        index, self._block, self._kind = self._block, -1, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open(self, block: dict) -> list[tuple[str, dict]]:
        out = self._close()
        self._block, self._kind = self._next, block["type"]
        self._next += 1
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._block, "content_block": block},
            )
        )
        return out

    def _delta(self, index: int, delta: dict) -> tuple[str, dict]:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": delta},
        )

    def feed(self, chunk: dict) -> list[tuple[str, dict]]:
        out = [] if self.started else self.start(chunk)
        if chunk.get("usage"):
            self.input_tokens = chunk["usage"].get("prompt_tokens", self.input_tokens)
            self.output_tokens = chunk["usage"].get("completion_tokens", self.output_tokens)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._kind != "text":
                    out += self._open({"type": "text", "text": ""})
                out.append(self._delta(self._block, {"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                position = call.get("index", 0)
                function = call.get("function") or {}
                if call.get("id") or position not in self._calls:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": function.get("name", ""),
                        "input": {},
                    }
                    out += self._open(block)
                    self._calls[position] = self._block
                pieces = function.get("arguments")
                if pieces:
                    index = self._calls[position]
                    out.append(
                        self._delta(index, {"type": "input_json_delta", "partial_json": pieces})
                    )
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self, stop_sequence: str | None = None) -> list[tuple[str, dict]]:
        """The closing events; `stop_sequence` as for `chat_to_message`."""
        out = [] if self.started else self.start({})
        out += self._close()
        out.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason(self.finish_reason, stop_sequence),
                        "stop_sequence": stop_sequence,
                    },
                    "usage": {"output_tokens": self.output_tokens},
                },
            )
        )
        out.append(("message_stop", {"type": "message_stop"}))
        return out


def _frame(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


PING = _frame("ping", {"type": "ping"})


async def message_frames(stream: Streamed) -> AsyncIterator[bytes]:
    """The stream as Anthropic's SSE events, with a `ping` whenever the model is
    silent for LLMSITE_MESSAGES_PING_S seconds (a long prompt's prefill)."""
    events = MessageEvents(input_tokens=stream.accounted.prompt_tokens)
    interval = settings.LLMSITE_MESSAGES_PING_S
    items = aiter(stream.events)
    pending: asyncio.Future | None = None
    try:
        first = events.start({"id": "", "model": stream.headers.get("x-llmsite-model", "")})
        events.started = True
        for name, data in first:
            yield _frame(name, data)
        yield PING
        while True:
            pending = asyncio.ensure_future(anext(items))
            while not pending.done():
                await asyncio.wait({pending}, timeout=interval)
                if not pending.done():
                    yield PING
            try:
                item = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            if isinstance(item, StreamError):
                yield _frame("error", error_body(item.error))
                return
            for name, data in events.feed(item):
                yield _frame(name, data)
        for name, data in events.finish(stream.stop_sequences.get(0)):
            yield _frame(name, data)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        # A client that left closes this generator: the service's stream must
        # end now, so it frees the engine and bills what was sent.
        await stream.aclose()


def respond(result: Completed | Streamed) -> Response | StreamingHttpResponse:
    if isinstance(result, Completed):
        message = chat_to_message(result.body, result.stop_sequences.get(0))
        return Response(message, headers=result.headers)
    return api.respond(result, frames=message_frames)


# -- views -----------------------------------------------------------------------------------
class _AnthropicView(InferenceView):
    """Anthropic's routes: `x-api-key` as well as `Authorization: Bearer`, any
    `anthropic-version`, and errors in Anthropic's shape."""

    authentication_classes = [AnthropicApiKeyAuthentication, JWTTenantAuthentication]

    def get_exception_handler(self):
        return exception_handler

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # Anthropic's SDKs read the request id from `request-id`.
        response["request-id"] = request._request.request_id
        return response

    async def chat_body(self, request, *, count_only: bool) -> dict:
        body = await self.body(request)
        try:
            return messages_to_chat(body, count_only=count_only)
        except APIError as exc:
            # Refused before the service saw it: still one record, as any refusal.
            raise await services.request_refuse(
                principal=request.user,
                endpoint=self.endpoint,
                request_id=request._request.request_id,
                error=exc,
                body=body,
            ) from exc


class MessageView(_AnthropicView):
    endpoint = ENDPOINT

    @extend_schema(
        operation_id="createMessage",
        tags=["Anthropic Messages"],
        request=schema.AnthropicMessageRequest,
        responses=schema.MESSAGE_RESPONSES,
        examples=[
            OpenApiExample("message", request_only=True, value=schema.MESSAGE_REQUEST),
            OpenApiExample("tools", request_only=True, value=schema.TOOL_REQUEST),
        ],
        description=(
            "Anthropic's Messages API on the same models, routes, quotas and usage records as "
            "chat (records under `messages`). Authenticate with `x-api-key` or "
            "`Authorization: Bearer`; `anthropic-version` is accepted. `system`, text, "
            "`tool_use` and `tool_result` blocks, `tools` (`input_schema`), `tool_choice` "
            "(auto, any, tool, none), `stop_sequences`, `temperature`, `top_p` and "
            "`metadata.user_id`; `max_tokens` is required. `top_k`, `thinking`, images and "
            "server tools are a 400 naming them. With `stream: true` the response is Anthropic's "
            "SSE events: message_start, content_block_start/delta/stop (text_delta, "
            "input_json_delta), message_delta (stop_reason, usage), message_stop, and `ping`. "
            "Errors: `{type: error, error: {type, message}}`."
        ),
    )
    async def post(self, request):
        chat = await self.chat_body(request, count_only=False)
        result = await services.chat_completion_create(
            principal=request.user,
            body=chat,
            request_id=request._request.request_id,
            endpoint=self.endpoint,
        )
        return respond(result)


class CountTokensView(_AnthropicView):
    endpoint = COUNT_ENDPOINT

    @extend_schema(
        operation_id="countMessageTokens",
        tags=["Anthropic Messages"],
        request=schema.AnthropicCountTokensRequest,
        responses=schema.COUNT_RESPONSES,
        examples=[
            OpenApiExample(
                "count",
                request_only=True,
                value={k: v for k, v in schema.MESSAGE_REQUEST.items() if k != "max_tokens"},
            ),
        ],
        description=(
            "The prompt tokens a /v1/messages request would use (its `usage.input_tokens`): "
            "the model's own chat template and tokenizer. Nothing is billed; the request "
            "counts towards requests per minute. `model` is a model id, an alias or `auto`, "
            "counted on the model /v1/messages would route it to first."
        ),
    )
    async def post(self, request):
        chat = await self.chat_body(request, count_only=True)
        result = await services.chat_prompt_count(
            principal=request.user,
            body=chat,
            request_id=request._request.request_id,
            endpoint=self.endpoint,
        )
        return Response({"input_tokens": result.body["prompt_tokens"]}, headers=result.headers)
