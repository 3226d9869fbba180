"""The request service: one entry per operation, and it owns the request.

`completion_create`, `chat_completion_create`, `embedding_create`,
`analysis_create`, `model_list` and `model_retrieve` each take the caller's
principal, the raw body and the request id (keyword-only). Each validates the
body, resolves the route, reserves quota, runs the model's backend with
fallback, and writes exactly one usage record in its own `finally` (a refusal,
a failure and a cancellation included). It returns a typed result:
`Completed` (a body) or `Streamed` (typed stream items), each with the headers
every response carries (x-ratelimit-*, x-llmsite-model/-route). A failure is
raised as an APIError that carries those headers too.

The accounting state is private here: the adapters (REST, SSE, WebSocket,
batch/compare) only render what comes back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone
from rest_framework.serializers import Serializer

from accounts.authentication import Principal
from billing.quota import prices_of
from inference import router, selectors
from inference.accounting import Accounting
from inference.backends import (
    Backend,
    Finish,
    GenerateRequest,
    Generation,
    TextDelta,
    ToolCallDelta,
    Usage,
    backend_for,
)
from inference.backends.local import _tokenize_chat, chat_prompt  # noqa: F401 - re-exported
from inference.engine import EngineError, ModelLoadError
from inference.models import LLMModel, StoredResponse
from inference.router import Route, health, route_resolve, route_resolve_cached
from inference.serializers import (
    ChatCompletionRequestSerializer,
    CompletionRequestSerializer,
    EmbeddingRequestSerializer,
)
from inference.telemetry import live
from llmsite.db import pooled
from llmsite.errors import (
    APIError,
    BackendUnavailable,
    ContextLengthExceeded,
    ModelNotFound,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamRejected,
    internal_error,
    to_api_error,
)
from llmsite.middleware import request_routed, request_taken

logger = logging.getLogger("llmsite.inference")


# -- results ----------------------------------------------------------------------
@dataclass(frozen=True)
class Accounted:
    """What the request's usage record says, for adapters that report it
    (WebSocket's done event, batch totals, compare's timings)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = 0.0
    first_token_at: float | None = None
    ended: float = 0.0
    rate_headers: dict[str, str] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completed:
    body: dict
    headers: dict[str, str]
    accounted: Accounted = field(default_factory=Accounted)
    # By choice: the request's stop string that ended it, where one did. OpenAI's
    # shape says only "stop"; Anthropic's Messages names the string.
    stop_sequences: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamError:
    """The last item of a stream that failed after it began."""

    error: APIError


StreamItem = dict | StreamError  # a chunk in OpenAI's shape, or the error that ends it


class Streamed:
    """A stream of chunks; closing it (or never reading it, then `close_soon`)
    stops the generation and writes the usage record."""

    def __init__(self, owner: _StreamOwner, headers: dict[str, str]) -> None:
        self._owner = owner
        self.headers = headers

    @property
    def events(self) -> AsyncIterator[StreamItem]:
        return self._owner

    @property
    def accounted(self) -> Accounted:
        return self._owner.acct_view()

    @property
    def stop_sequences(self) -> dict[int, str]:
        """As Completed's, filled in as each choice ends."""
        return self._owner.stop_sequences

    async def aclose(self) -> None:
        await self._owner.aclose()

    def close_soon(self) -> None:
        """Thread-safe: end the stream if nobody read it to its end (a response
        closed by a client that left before the body was iterated)."""
        self._owner.close_soon()


@dataclass(frozen=True)
class Outcome:
    """A request's result or its error, for adapters that keep going after a
    failure (batch and compare items)."""

    result: Completed | Streamed | None
    error: APIError | None
    accounted: Accounted


# -- accounting helpers -------------------------------------------------------------
def _start(principal: Principal, endpoint: str, request_id: str, body) -> Accounting:
    # From here on this request is ours: its one usage record is written however it ends.
    request_taken()
    raw = body if isinstance(body, dict) else {}
    user = raw.get("user")
    return Accounting(
        principal=principal,
        endpoint=endpoint,
        request_id=request_id,
        end_user=user[:256] if isinstance(user, str) else "",
        model_id=str(raw.get("model", ""))[:128],
    )


def _view(acct: Accounting) -> Accounted:
    return Accounted(
        prompt_tokens=acct.prompt_tokens,
        completion_tokens=acct.completion_tokens,
        started=acct.started,
        first_token_at=acct.first_token_at,
        ended=time.monotonic(),
        rate_headers=acct.rate_headers(),
    )


def _headers(acct: Accounting) -> dict[str, str]:
    headers = {**acct.rate_headers(), **acct.headers}
    timing = acct.server_timing()
    if timing is not None:
        headers["Server-Timing"] = timing
    return headers


def _as_api_error(exc: Exception, acct: Accounting) -> APIError:
    """The typed error for any failure, carrying the response headers."""
    err = to_api_error(exc)
    if err is None:
        if isinstance(exc, EngineError):
            logger.error("engine failure: %s", exc)
        else:
            logger.error("unhandled error in request %s", acct.request_id, exc_info=exc)
        err = internal_error()
    err.headers = {**err.headers, **_headers(acct)}
    return err


async def _count_refused_prompt(acct: Accounting, exc: Exception) -> None:
    """A prompt refused as too long still cost its tokenization: it counts
    against the caller's requests per minute (billed nothing), so oversized
    prompts cannot be sent without limit."""
    if acct.reservation is not None or not isinstance(exc, ContextLengthExceeded):
        return
    acct.prompt_tokens = acct.completion_tokens = 0
    with contextlib.suppress(APIError):  # over the limit already: the 400 still stands
        await acct.reserve(model=None, max_completion_tokens=0)


def _validated(serializer_class: type[Serializer], body) -> dict:
    serializer = serializer_class(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


async def request_refuse(
    *, principal: Principal, endpoint: str, request_id: str, error: Exception, body=None
) -> APIError:
    """Record a request refused before it ran (a body that cannot be read, an
    invalid batch envelope); returns the error to raise."""
    acct = _start(principal, endpoint, request_id, body)
    acct.fail(error)
    await acct.write()
    return _as_api_error(error, acct)


# -- the router's fallback loop --------------------------------------------------------
def _backend_failure(exc: BaseException) -> bool:
    """A real fault of the backend itself: only these count towards its cooldown.

    A refused connection, a timeout, an upstream 5xx, an engine that failed or a
    GGUF that would not load. An overloaded or still-loading model, and a
    request that is invalid or too long for it, are no fault of the backend.
    """
    if isinstance(exc, EngineError | asyncio.TimeoutError | BackendUnavailable):
        return True
    if isinstance(exc, ModelUnavailable):
        return isinstance(exc.__cause__, ModelLoadError)
    if isinstance(exc, ServiceUnavailable):
        return False
    return isinstance(exc, APIError) and exc.status >= 500 and exc.code != "model_overloaded"


def _retryable(exc: BaseException) -> bool:
    # Another candidate may have room (overloaded, loading), or a context long
    # enough (a context too long for this one), or simply work.
    if _backend_failure(exc):
        return True
    if isinstance(exc, APIError) and exc.status >= 500:
        return True
    return isinstance(exc, ContextLengthExceeded | UpstreamRejected)


async def _reserve(acct: Accounting, model: LLMModel, max_completion_tokens: int) -> None:
    """Reserve once per request; a fallback keeps the reservation, priced for the new model."""
    if acct.reservation is None:
        await acct.reserve(model=model, max_completion_tokens=max_completion_tokens)
    else:
        acct.model_pk = model.pk
        acct.reservation.prices = prices_of(model)


def _observe(acct: Accounting, model_id: str, *, ok: bool, attempt_started: float) -> None:
    first = acct.first_token_at
    now = time.monotonic()
    live.finished(
        model_id,
        ok=ok,
        ttft_s=(first - attempt_started) if first else None,
        completion_tokens=acct.completion_tokens,
        decode_s=(now - first) if first else (now - attempt_started),
    )


async def _route_resolve(
    principal: Principal, name: str, capability: str, *, peek: bool = False
) -> Route:
    """The route, from this process's cache on the event loop when it can be
    (the common case: no thread hop), else from the database in a thread."""
    fields = {
        "tenant": principal.tenant,
        "api_key": principal.api_key,
        "name": name,
        "capability": capability,
        "generations": principal.generations,
        "peek": peek,
    }
    route = route_resolve_cached(**fields)
    if route is None:
        route = await sync_to_async(pooled(route_resolve))(**fields)
    return route


@dataclass
class _Attempt:
    model: LLMModel
    backend: Backend
    started: float
    timeout: float | None  # seconds to the first event before falling back; None: wait


async def _routed(*, principal: Principal, data: dict, acct: Accounting, capability: str, run):
    """Resolve the route, then `run(attempt)` on each candidate until one answers.

    `run` returns once the backend produced its first event (or its whole
    answer): until then nothing was sent, so a failure can still move on to
    the next candidate. Returns (what run returned, the attempt).
    """
    acct.model_id = data["model"]
    route = await _route_resolve(principal, data["model"], capability)
    for index, model in enumerate(route.order):
        last = index == len(route.order) - 1
        acct.model_id = model.model_id
        acct.completion_tokens = 0
        acct.first_token_at = None
        live.started(model.model_id)
        started = time.monotonic()
        timeout = None if last else settings.LLMSITE_ROUTER_TIMEOUT
        attempt = _Attempt(model, backend_for(model), started, timeout)
        # From here the backend counts it (a local one as on its way to its engine).
        request_routed()
        try:
            result = await run(attempt)
        except BaseException as exc:
            failed = _backend_failure(exc)
            live.finished(model.model_id, ok=not failed)
            if failed:
                health.failed(model.model_id)
            if last or not isinstance(exc, Exception) or not _retryable(exc):
                raise
            logger.warning(
                "route %s: %s failed (%s), trying the next candidate",
                route.name,
                model.model_id,
                exc,
            )
            continue
        health.succeeded(model.model_id)
        acct.headers["x-llmsite-model"] = model.model_id
        acct.headers["x-llmsite-route"] = route.header(model, index)
        return result, attempt
    raise AssertionError("a route always has a candidate")


# -- text generation ------------------------------------------------------------------
def _now() -> int:
    return int(time.time())


def _fingerprint(model: LLMModel) -> str:
    return f"fp_{model.model_id[:16]}_{model.n_ctx}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion_logprobs(entries, offset: int) -> dict:
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry.token)
        token_logprobs.append(entry.logprob)
        top.append({tok: lp for tok, _b, lp in entry.top} if entry.top else None)
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _chat_logprobs(entries) -> dict:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [
                    {"token": tok, "logprob": lp, "bytes": raw} for tok, raw, lp in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


@dataclass(frozen=True)
class _Text:
    """How one text endpoint reads its body and shapes its answer."""

    kind: str  # the backend path: "completions" or "chat/completions"
    serializer: type[Serializer]
    id_prefix: str
    object: str
    chunk_object: str

    def capability(self, data: dict) -> str:
        if self.kind == "completions":
            return "completion"
        response_format = data.get("response_format") or {}
        json_mode = response_format.get("type") in ("json_object", "json_schema")
        return "json" if json_mode else "chat"

    def wants_logprobs(self, data: dict) -> bool:
        if self.kind == "completions":
            return data.get("logprobs") is not None
        return bool(data.get("logprobs"))

    def logprobs(self, entries, offset: int = 0) -> dict:
        if self.kind == "completions":
            return _completion_logprobs(entries, offset)
        return _chat_logprobs(entries)

    def prefix(self, data: dict, gen: Generation, index: int) -> str:
        if self.kind != "completions" or not data.get("echo") or gen.prompt_texts is None:
            return ""
        return gen.prompt_texts[index // gen.n]

    def whole_choice(
        self, index: int, text: str, finish, logprobs, calls: list[dict] | None = None
    ) -> dict:
        if self.kind == "completions":
            return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if calls:
            # OpenAI's shape: content is null when the reply is only calls.
            message["content"] = text if text.strip() else None
            message["tool_calls"] = calls
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}

    def opening(self, data: dict, gen: Generation, index: int) -> dict | None:
        if self.kind == "completions":
            prefix = self.prefix(data, gen, index)
            if not data.get("echo") or gen.prompt_texts is None:
                return None
            return {"text": prefix, "index": index, "logprobs": None, "finish_reason": None}
        return {
            "index": index,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }

    def piece(self, index: int, text: str | None, finish, logprobs) -> dict:
        if self.kind == "completions":
            return {
                "text": text or "",
                "index": index,
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        delta = {"content": text} if text is not None else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def call_piece(self, event: ToolCallDelta) -> dict:
        """A chat chunk's choice with one piece of a tool call: the first piece of
        a call carries its id, type and name, later ones more of its arguments."""
        item: dict = {"index": event.call_index}
        if event.id is not None or event.name is not None:
            item["id"] = event.id
            item["type"] = "function"
            item["function"] = {"name": event.name, "arguments": event.arguments}
        else:
            item["function"] = {"arguments": event.arguments}
        return {
            "index": event.index,
            "delta": {"tool_calls": [item]},
            "logprobs": None,
            "finish_reason": None,
        }


def _whole_calls(pieces: dict[int, dict]) -> list[dict]:
    """A choice's tool-call pieces, by call, as a whole message's `tool_calls`."""
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
        }
        for _, call in sorted(pieces.items())
    ]


COMPLETIONS = _Text(
    "completions", CompletionRequestSerializer, "cmpl", "text_completion", "text_completion"
)
CHAT = _Text(
    "chat/completions",
    ChatCompletionRequestSerializer,
    "chatcmpl",
    "chat.completion",
    "chat.completion.chunk",
)


def _envelope(meta: dict, obj: str) -> dict:
    """The fields every response and chunk opens with, in OpenAI's order."""
    return {
        "id": meta["id"],
        "object": obj,
        "created": meta["created"],
        "model": meta["model"],
        "system_fingerprint": meta["system_fingerprint"],
    }


def _owner(acct: Accounting) -> str:
    return str(acct.principal.tenant.pk)


async def _text_attempt(spec: _Text, data: dict, acct: Accounting, attempt: _Attempt):
    gen = await attempt.backend.prepare(
        GenerateRequest(kind=spec.kind, data=data, owner=_owner(acct))
    )
    acct.prompt_tokens = gen.prompt_tokens
    reserving = time.monotonic()
    try:
        await _reserve(acct, attempt.model, gen.reserve_tokens)
    except BaseException:
        await gen.close()
        raise
    finally:
        acct.quota_s += time.monotonic() - reserving
    started = time.monotonic()
    await gen.start(attempt.timeout)
    if data["stream"]:
        acct.backend_s = time.monotonic() - started
        return gen, None
    # A failure before the whole answer is in may still fall back: nothing was sent.
    collected = await _collect(spec, data, gen, acct)
    acct.backend_s = time.monotonic() - started
    return gen, collected


async def _collect(
    spec: _Text, data: dict, gen: Generation, acct: Accounting
) -> tuple[list[dict], dict[int, str]]:
    """Read a generation to its end and shape the whole answer: its choices, and
    the stop string that ended each choice where one did."""
    texts: dict[int, list[str]] = {}
    entries: dict[int, list] = {}
    finish: dict[int, str | None] = {}
    stops: dict[int, str] = {}
    counts: dict[int, int] = {}
    calls: dict[int, dict[int, dict]] = {}
    usage: Usage | None = None
    events = gen.events()
    try:
        async for event in events:
            if isinstance(event, ToolCallDelta):
                acct.first_token()
                texts.setdefault(event.index, [])
                call = calls.setdefault(event.index, {}).setdefault(
                    event.call_index, {"id": None, "name": None, "arguments": []}
                )
                call["id"] = call["id"] or event.id
                call["name"] = call["name"] or event.name
                call["arguments"].append(event.arguments)
            elif isinstance(event, TextDelta):
                acct.first_token()
                texts.setdefault(event.index, []).append(event.text)
                entries.setdefault(event.index, []).extend(event.logprobs)
                counts[event.index] = counts.get(event.index, 0) + event.n_tokens
            elif isinstance(event, Finish):
                texts.setdefault(event.index, [])
                finish[event.index] = event.reason
                if event.stop_sequence is not None:
                    stops[event.index] = event.stop_sequence
                if event.completion_tokens is not None:
                    counts[event.index] = event.completion_tokens
            elif isinstance(event, Usage):
                usage = event
    finally:
        await events.aclose()
        await gen.close()
    acct.completion_tokens = sum(counts.values())
    if usage is not None:
        acct.prompt_tokens, acct.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    wants = spec.wants_logprobs(data)
    choices = []
    for index in sorted(texts):
        prefix = spec.prefix(data, gen, index)
        lp = spec.logprobs(entries.get(index, []), len(prefix)) if wants else None
        text = prefix + "".join(texts[index])
        whole_calls = _whole_calls(calls[index]) if index in calls else None
        choices.append(spec.whole_choice(index, text, finish.get(index), lp, whole_calls))
    return choices, stops


async def _text_create(
    spec: _Text,
    *,
    principal: Principal,
    body,
    request_id: str,
    endpoint: str,
    validate: Callable[[object], dict] | None = None,
    shape: Callable[[dict], dict] | None = None,
    record_body=None,
) -> Outcome:
    acct = _start(principal, endpoint, request_id, body if record_body is None else record_body)
    handed_over = False
    try:
        data = validate(body) if validate else _validated(spec.serializer, body)
        (gen, collected), attempt = await _routed(
            principal=principal,
            data=data,
            acct=acct,
            capability=spec.capability(data),
            run=lambda attempt: _text_attempt(spec, data, acct, attempt),
        )
        model = attempt.model
        meta = {
            "id": f"{spec.id_prefix}-{uuid.uuid4().hex}",
            "created": _now(),
            "model": model.model_id,
            "system_fingerprint": _fingerprint(model),
        }
        if data["stream"]:
            owner = _StreamOwner(spec, data, gen, acct, meta, attempt)
            handed_over = True
            return Outcome(Streamed(owner, _headers(acct)), None, _view(acct))
        _observe(acct, model.model_id, ok=True, attempt_started=attempt.started)
        choices, stops = collected
        answer = {
            **_envelope(meta, spec.object),
            "choices": choices,
            "usage": _usage(acct.prompt_tokens, acct.completion_tokens),
        }
        if shape is not None:
            answer = shape(answer)
        completed = Completed(answer, _headers(acct), _view(acct), stops)
        return Outcome(completed, None, _view(acct))
    except Exception as exc:
        acct.fail(exc)
        await _count_refused_prompt(acct, exc)
        return Outcome(None, _as_api_error(exc, acct), _view(acct))
    except BaseException as exc:
        acct.fail(exc)
        raise
    finally:
        if not handed_over:
            await acct.write()


class _StreamOwner:
    """Owns a streamed request from the moment the service returns it: it
    renders the events as chunks and, however the stream ends (read to the end,
    closed by the reader, or never read at all), stops the generation and
    writes the one usage record."""

    def __init__(self, spec, data, gen: Generation, acct, meta, attempt: _Attempt) -> None:
        self.spec = spec
        self.data = data
        self.gen = gen
        self.acct = acct
        self.meta = meta
        self.attempt = attempt
        self.loop = asyncio.get_running_loop()
        self._chunks = self._render()
        self._started = False
        self._done = False
        self.stop_sequences: dict[int, str] = {}

    def acct_view(self) -> Accounted:
        return _view(self.acct)

    def __aiter__(self) -> _StreamOwner:
        return self

    async def __anext__(self) -> StreamItem:
        if self._done and not self._started:
            raise StopAsyncIteration
        self._started = True
        return await anext(self._chunks)

    async def aclose(self) -> None:
        if self._started:
            await self._chunks.aclose()
            return
        if self._done:
            return
        # Never read: the generator's `finally` would never run, so end it here.
        self._done = True
        await self._chunks.aclose()
        with contextlib.suppress(Exception):
            await self.gen.close()
        self.acct.fail(asyncio.CancelledError())
        _observe(
            self.acct, self.attempt.model.model_id, ok=True, attempt_started=self.attempt.started
        )
        await self.acct.write()

    def close_soon(self) -> None:
        if self._done or self.acct.written or self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._close_quietly()))

    async def _close_quietly(self) -> None:
        try:
            await self.aclose()
        except Exception:
            logger.exception("could not close the stream of request %s", self.acct.request_id)

    def _chunk(self, choice: dict) -> dict:
        body = {**_envelope(self.meta, self.spec.chunk_object), "choices": [choice]}
        if self.data["include_usage"]:
            body["usage"] = None
        return body

    async def _render(self) -> AsyncIterator[StreamItem]:
        spec, data, gen, acct = self.spec, self.data, self.gen, self.acct
        include_usage = data["include_usage"]
        wants = spec.wants_logprobs(data)
        opened: set[int] = set()
        counted = 0
        exact = False
        events = gen.events()
        try:
            async for event in events:
                if isinstance(event, Usage):
                    exact = True
                    acct.prompt_tokens = event.prompt_tokens
                    acct.completion_tokens = event.completion_tokens
                    continue
                if event.index not in opened:
                    opened.add(event.index)
                    opening = spec.opening(data, gen, event.index)
                    if opening is not None:
                        yield self._chunk(opening)
                if isinstance(event, ToolCallDelta):
                    acct.first_token()
                    yield self._chunk(spec.call_piece(event))
                elif isinstance(event, TextDelta):
                    acct.first_token()
                    lp = spec.logprobs(event.logprobs) if wants and event.logprobs else None
                    # Counted as handed to the server: a client that leaves
                    # pays for what it was sent, and nothing more.
                    counted += event.n_tokens
                    if not exact:
                        acct.completion_tokens = counted
                    if event.text or lp:
                        yield self._chunk(spec.piece(event.index, event.text, None, lp))
                elif isinstance(event, Finish):
                    if event.stop_sequence is not None:
                        self.stop_sequences[event.index] = event.stop_sequence
                    closing = spec.piece(event.index, None, event.reason, None)
                    yield self._chunk(closing)
            if include_usage:
                yield {
                    **_envelope(self.meta, spec.chunk_object),
                    "choices": [],
                    "usage": _usage(acct.prompt_tokens, acct.completion_tokens),
                }
        except BaseException as exc:
            acct.fail(exc)
            if not isinstance(exc, Exception):
                raise
            yield StreamError(_as_api_error(exc, acct))
        finally:
            self._done = True
            with contextlib.suppress(Exception):
                await events.aclose()
            with contextlib.suppress(Exception):
                await gen.close()
            ok = acct.status != "error"
            _observe(acct, self.attempt.model.model_id, ok=ok, attempt_started=self.attempt.started)
            await acct.write()


async def _raise_or_return(outcome: Outcome) -> Completed | Streamed:
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


async def completion_create(
    *, principal: Principal, body, request_id: str, endpoint: str = "completions"
) -> Completed | Streamed:
    return await _raise_or_return(
        await _text_create(
            COMPLETIONS, principal=principal, body=body, request_id=request_id, endpoint=endpoint
        )
    )


async def chat_completion_create(
    *,
    principal: Principal,
    body,
    request_id: str,
    endpoint: str = "chat.completions",
) -> Completed | Streamed:
    return await _raise_or_return(
        await _text_create(
            CHAT, principal=principal, body=body, request_id=request_id, endpoint=endpoint
        )
    )


# -- /v1/embeddings ---------------------------------------------------------------------
def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _embedding_attempt(data: dict, acct: Accounting, attempt: _Attempt):
    job = await attempt.backend.embed(data, owner=_owner(acct))
    acct.prompt_tokens = job.prompt_tokens
    await _reserve(acct, attempt.model, 0)
    result = await job.run()
    acct.prompt_tokens = result.prompt_tokens
    return result


async def _embedding_run(
    *, principal, body, request_id, endpoint, validate=None, record_body=None
) -> Outcome:
    acct = _start(principal, endpoint, request_id, body if record_body is None else record_body)
    try:
        data = validate(body) if validate else _validated(EmbeddingRequestSerializer, body)
        result, attempt = await _routed(
            principal=principal,
            data=data,
            acct=acct,
            capability="embeddings",
            run=lambda attempt: _embedding_attempt(data, acct, attempt),
        )
        _observe(acct, attempt.model.model_id, ok=True, attempt_started=attempt.started)
        as_base64 = data["encoding_format"] == "base64"
        answer = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _b64(v) if as_base64 else v}
                for i, v in enumerate(result.vectors)
            ],
            "model": attempt.model.model_id,
            "usage": {"prompt_tokens": acct.prompt_tokens, "total_tokens": acct.prompt_tokens},
        }
        return Outcome(Completed(answer, _headers(acct), _view(acct)), None, _view(acct))
    except Exception as exc:
        acct.fail(exc)
        await _count_refused_prompt(acct, exc)
        return Outcome(None, _as_api_error(exc, acct), _view(acct))
    except BaseException as exc:
        acct.fail(exc)
        raise
    finally:
        await acct.write()


async def embedding_create(
    *, principal: Principal, body, request_id: str, endpoint: str = "embeddings"
) -> Completed:
    return await _raise_or_return(
        await _embedding_run(
            principal=principal, body=body, request_id=request_id, endpoint=endpoint
        )
    )


# -- /v1/analyze -------------------------------------------------------------------------
async def analysis_create(
    *, principal: Principal, body, request_id: str, endpoint: str = "analyze"
) -> Completed:
    """Sentiment, keywords and summary of a text: one chat completion underneath
    (see `inference.extras`), one request and one record under `analyze`."""
    from inference import extras  # extras runs its batches through this module

    tasks: list[str] = []

    def validate(raw) -> dict:
        data, wanted = extras.analysis_request(raw)
        tasks.extend(wanted)
        return data

    return await _raise_or_return(
        await _text_create(
            CHAT,
            principal=principal,
            body=body,
            request_id=request_id,
            endpoint=endpoint,
            validate=validate,
            shape=lambda answer: extras.analysis_shape(answer, tasks),
        )
    )


# -- /v1/models ------------------------------------------------------------------------
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


def _model_and_alias_list(*, tenant, api_key) -> dict:
    models = selectors.model_list(tenant=tenant, api_key=api_key)
    aliases = router.alias_list(tenant=tenant, api_key=api_key)
    data = [_model_object(m) for m in models] + [_alias_object(a) for a in aliases]
    return {"object": "list", "data": data}


def _model_or_alias(*, tenant, api_key, model_id: str) -> dict:
    try:
        return _model_object(selectors.model_get(tenant=tenant, api_key=api_key, model_id=model_id))
    except ModelNotFound:
        for alias in router.alias_list(tenant=tenant, api_key=api_key):
            if alias.name == model_id:
                return _alias_object(alias)
        raise


async def _read(acct: Accounting, read) -> Completed:
    try:
        await acct.reserve(model=None, max_completion_tokens=0)
        body = await sync_to_async(read)()
        return Completed(body, _headers(acct), _view(acct))
    except Exception as exc:
        acct.fail(exc)
        raise _as_api_error(exc, acct) from exc
    except BaseException as exc:
        acct.fail(exc)
        raise
    finally:
        await acct.write()


async def request_read(
    *, principal: Principal, request_id: str, endpoint: str, read: Callable[[], dict]
) -> Completed:
    """A read-only request (a stored response, its input items): one request per
    minute and one record, nothing billed; `read()` runs in a thread."""
    return await _read(_start(principal, endpoint, request_id, None), read)


async def model_list(*, principal: Principal, request_id: str) -> Completed:
    acct = _start(principal, "models", request_id, None)
    return await _read(
        acct,
        lambda: _model_and_alias_list(tenant=principal.tenant, api_key=principal.api_key),
    )


async def model_retrieve(*, principal: Principal, request_id: str, model_id: str) -> Completed:
    acct = _start(principal, "models", request_id, None)
    acct.model_id = model_id[:128]
    return await _read(
        acct,
        lambda: _model_or_alias(
            tenant=principal.tenant, api_key=principal.api_key, model_id=model_id
        ),
    )


# -- /tokenize, /detokenize ---------------------------------------------------------------
async def tokenizer_run(
    *,
    principal: Principal,
    body,
    request_id: str,
    endpoint: str,
    serializer_class: type[Serializer],
    work: Callable[[Any, LLMModel, dict], dict],
    capability: Callable[[dict], str] | None = None,
) -> Completed:
    """Run `work(tokenizer, model, data)` on the named model's own tokenizer, in a
    worker thread: one request and one record (nothing billed), a model the
    caller may not use a 404, as everywhere.

    With `capability` (of the validated body), `model` may also be an alias or
    `auto`: the model is the one a generation of that capability would try
    first now, without taking a round-robin turn from one."""
    acct = _start(principal, endpoint, request_id, body)
    try:
        data = _validated(serializer_class, body)
        if capability is None:
            model = await sync_to_async(selectors.model_get)(
                tenant=principal.tenant, api_key=principal.api_key, model_id=data["model"]
            )
        else:
            acct.model_id = data["model"]
            route = await _route_resolve(principal, data["model"], capability(data), peek=True)
            model = route.order[0]
            acct.headers["x-llmsite-model"] = model.model_id
            acct.headers["x-llmsite-route"] = route.header(model, 0)
        acct.model_id = model.model_id
        tokenizer = await backend_for(model).tokenizer()
        await acct.reserve(model=None, max_completion_tokens=0)
        out = await sync_to_async(work, thread_sensitive=False)(tokenizer, model, data)
        return Completed(out, _headers(acct), _view(acct))
    except Exception as exc:
        acct.fail(exc)
        raise _as_api_error(exc, acct) from exc
    except BaseException as exc:
        acct.fail(exc)
        raise
    finally:
        await acct.write()


async def chat_prompt_count(
    *, principal: Principal, body, request_id: str, endpoint: str
) -> Completed:
    """`{"prompt_tokens": N}` for an OpenAI chat body: its prompt built as the local
    backend builds it for inference (template, tools), on the tokenizer of the
    model the chat would be routed to (a model id, an alias or `auto`). One
    record, nothing billed (see `tokenizer_run`)."""
    return await tokenizer_run(
        principal=principal,
        body=body,
        request_id=request_id,
        endpoint=endpoint,
        serializer_class=ChatCompletionRequestSerializer,
        capability=CHAT.capability,
        work=lambda tokenizer, model, data: {
            "prompt_tokens": len(chat_prompt(tokenizer, model, data)[0])
        },
    )


# -- fan-out ----------------------------------------------------------------------------
async def request_run(
    operation: str,
    *,
    principal: Principal,
    body,
    request_id: str,
    endpoint: str,
    validate: Callable[[object], dict] | None = None,
    record_body=None,
) -> Outcome:
    """Run one non-streamed request and return its outcome instead of raising
    (a batch or compare item): `operation` is "completions", "chat.completions"
    or "embeddings". `validate` replaces the operation's own serializer (a batch
    item is validated with its URL); `record_body` is what the usage record's
    model and end user are read from, when not `body`. The record is written,
    as for any request."""
    kwargs = dict(
        principal=principal,
        body=body,
        request_id=request_id,
        endpoint=endpoint,
        validate=validate,
        record_body=record_body,
    )
    if operation == "embeddings":
        return await _embedding_run(**kwargs)
    spec = COMPLETIONS if operation == "completions" else CHAT
    return await _text_create(spec, **kwargs)


# -- /v1/responses storage -------------------------------------------------------------
def stored_response_save(*, tenant, response: dict, input_items: list[dict]) -> None:
    """Keep a Responses answer for LLMSITE_RESPONSES_RETENTION_DAYS, and prune
    what expired meanwhile (any tenant's: expired rows are nobody's data)."""
    now = timezone.now()
    StoredResponse.objects.filter(expires_at__lte=now).delete()
    StoredResponse.objects.create(
        tenant=tenant,
        response_id=response["id"],
        response=response,
        input_items=input_items,
        expires_at=now + timedelta(days=settings.LLMSITE_RESPONSES_RETENTION_DAYS),
    )


def stored_response_delete(*, tenant, response_id: str) -> dict:
    row = selectors.stored_response_get(tenant=tenant, response_id=response_id)
    StoredResponse.objects.filter(pk=row.pk).delete()
    return {"id": response_id, "object": "response.deleted", "deleted": True}
