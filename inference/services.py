"""Completions, chat completions and embeddings: validated input in, OpenAI's shapes out.

Each service resolves the model through the caller's tenant, turns the request
into token ids, checks it against the context, queues it on the model's
engine, and shapes the result. Streams are async iterators of chunk objects
(an error object ends a failed stream); the transport (SSE, WebSocket) frames
them. The usage record is written in a `finally`, so a request that fails or a client
that disconnects is still accounted for exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.authentication import Principal
from billing.quota import prices_of
from inference.accounting import Accounting
from inference.chat_templates import chat_prompt, format_prompt
from inference.engine import (
    EmbeddingResult,
    EngineClosed,
    EngineError,
    Finished,
    LlamaEngine,
    ModelLoadError,
    SamplingParams,
    TextDelta,
)
from inference.live import live
from inference.models import LLMModel
from inference.registry import MemoryBudgetExceeded, registry
from inference.remote import RemoteBackend
from inference.router import health, route_resolve
from llmsite.errors import (
    APIError,
    BackendUnavailable,
    ContextLengthExceeded,
    InvalidRequest,
    ModelUnavailable,
    ServiceUnavailable,
    UpstreamRejected,
    internal_error,
    to_api_error,
)

logger = logging.getLogger("llmsite.inference")

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


# -- engines ---------------------------------------------------------------------
async def local_engine(model: LLMModel) -> LlamaEngine:
    """The loaded engine for a local model, loading it (off the event loop) if needed."""
    engine = registry.ready_engine(model)
    if engine is not None:  # the common case: no thread hops
        return engine
    try:
        engine = await sync_to_async(registry.engine_for, thread_sensitive=False)(model)
        ready = await sync_to_async(engine.wait_ready, thread_sensitive=False)(
            settings.LLMSITE_LOAD_TIMEOUT
        )
    except ModelLoadError as exc:
        logger.error("model %s unavailable: %s", model.model_id, exc)
        raise ModelUnavailable(
            f"The model `{model.model_id}` is unavailable: its GGUF file could not be loaded.",
            param="model",
            code="model_unavailable",
            headers={"Retry-After": "60"},
        ) from exc
    except MemoryBudgetExceeded as exc:
        raise ModelUnavailable(
            f"The model `{model.model_id}` cannot be loaded now: {exc}",
            param="model",
            code="model_unavailable",
            headers={"Retry-After": "10"},
        ) from exc
    if not ready:
        raise ModelUnavailable(
            f"The model `{model.model_id}` is still loading; retry shortly.",
            param="model",
            headers={"Retry-After": "5"},
        )
    return engine


def _check_capacity(engine: LlamaEngine, jobs: int) -> None:
    # Refuse up front rather than queue without bound: a 503 with Retry-After
    # lets a client (or a load balancer) go elsewhere now.
    if engine.queue_depth + jobs > settings.LLMSITE_MAX_QUEUE:
        raise ServiceUnavailable(
            f"The model `{engine.spec.model_id}` is overloaded; retry shortly.",
            code="model_overloaded",
            headers={"Retry-After": "2"},
        )


async def _submit_all(
    model: LLMModel, engine: LlamaEngine, jobs: list[tuple[list[int], SamplingParams]]
) -> list:
    """Queue every job on the model's engine. An engine unloaded meanwhile (an
    operator's unload or reload) is replaced by a fresh one, so the request
    waits for the load instead of failing."""
    handles = []
    try:
        for tokens, params in jobs:
            try:
                handles.append(engine.submit(tokens, params))
            except EngineClosed:
                engine = await local_engine(model)
                handles.append(engine.submit(tokens, params))
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    return handles


# -- routing -------------------------------------------------------------------------
def _backend_failure(exc: BaseException) -> bool:
    """Failures of the backend itself: they count towards its cooldown."""
    if isinstance(exc, EngineError | asyncio.TimeoutError):
        return True
    return isinstance(exc, APIError) and exc.status >= 500


def _retryable(exc: BaseException) -> bool:
    # A context too long for one candidate may fit the next one's.
    return _backend_failure(exc) or isinstance(exc, ContextLengthExceeded | UpstreamRejected)


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


async def _serve(
    *, principal: Principal, data: dict, acct: Accounting, capability: str, run
) -> dict | AsyncIterator[dict]:
    """Resolve the route, then run on each candidate until one answers.

    `run(model, attempt)` returns a response dict, or a stream that has
    already produced its first event: until then nothing was sent, so a
    failure can still move on to the next candidate. Returns what the
    answering candidate returned; the usage record is written once, here for
    responses and failures, by the stream itself for streams.
    """
    acct.model_id = data["model"]
    try:
        route = await sync_to_async(route_resolve)(
            tenant=principal.tenant,
            api_key=principal.api_key,
            name=data["model"],
            capability=capability,
            generations=principal.generations,
        )
        for attempt, model in enumerate(route.order):
            last = attempt == len(route.order) - 1
            acct.model_id = model.model_id
            acct.completion_tokens = 0
            acct.first_token_at = None
            live.started(model.model_id)
            started = time.monotonic()
            try:
                timeout = None if last else settings.LLMSITE_ROUTER_TIMEOUT
                result = await run(model, _Attempt(started, timeout, acct))
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
            acct.headers["x-llmsite-route"] = route.header(model, attempt)
            if isinstance(result, dict):
                result["model"] = model.model_id
                _observe(acct, model.model_id, ok=True, attempt_started=started)
                await acct.write()
                return result
            acct.deferred = True  # the stream writes the record when it ends
            return _observed(result, acct, model.model_id, started)
        raise AssertionError("a route always has a candidate")
    except BaseException as exc:
        acct.fail(exc)
        await acct.write()
        raise


async def _observed(
    stream: AsyncIterator[dict], acct: Accounting, model_id: str, started: float
) -> AsyncIterator[dict]:
    try:
        async for chunk in stream:
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()
        _observe(acct, model_id, ok=acct.status != "error", attempt_started=started)


@dataclass
class _Attempt:
    started: float
    timeout: float | None  # seconds to the first event before falling back; None: wait
    acct: Accounting


def _tokenize_prompt(engine: LlamaEngine, item: str | list[int], param: str) -> list[int]:
    if isinstance(item, str):
        return engine.tokenize(item, add_bos=True, special=False)
    bad = next((t for t in item if not engine.valid_token(t)), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} is outside this model's vocabulary (0..{engine.n_vocab - 1}).",
            param=param,
            code="invalid_value",
        )
    return list(item)


def _logit_bias(engine: LlamaEngine, bias: dict[int, float]) -> dict[int, float] | None:
    bad = next((t for t in bias if not engine.valid_token(t)), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} in logit_bias is outside this model's vocabulary "
            f"(0..{engine.n_vocab - 1}).",
            param="logit_bias",
            code="invalid_value",
        )
    return bias or None


def _max_tokens(
    model: LLMModel, prompt_len: int, requested: int | None, default: int | None, param: str
) -> int:
    room = model.n_ctx - prompt_len
    if requested is None:
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {model.n_ctx} tokens. However, your "
                f"{param} resulted in {prompt_len} tokens. Please reduce the length of the "
                f"{param}.",
                param=param,
            )
        return min(default, room) if default else room
    if prompt_len + requested > model.n_ctx:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.n_ctx} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the {param}, "
            f"{requested} in the completion). Please reduce the length of the {param} or "
            f"completion.",
            param=param,
        )
    return requested


def _seed_for(seed: int | None, choice: int) -> int | None:
    return None if seed is None else (seed + choice) & 0xFFFFFFFF


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


@dataclass
class _Choice:
    index: int
    handle: object
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list = field(default_factory=list)
    peeked: list = field(default_factory=list)

    async def iterate(self) -> AsyncIterator[object]:
        while self.peeked:
            event = self.peeked.pop(0)
            yield event
            if isinstance(event, Finished):
                return
        # A fresh iterator: the rest may be read from another event loop than
        # the peek (Django's test client does that), and a handle iterator
        # waits on the loop it started in.
        async for event in self.handle:
            yield event


async def _first_event(choices: list[_Choice], attempt: _Attempt) -> None:
    """Wait for the first choice's first event, so that a backend that fails or
    stalls fails here, before anything is sent, where the router can fall back."""
    choice = choices[0]
    events = aiter(choice.handle)
    try:
        event = await asyncio.wait_for(anext(events), attempt.timeout)
    except BaseException:
        _cancel_all(choices)
        raise
    finally:
        await events.aclose()
    choice.peeked.append(event)


async def _drain(choice: _Choice, acct: Accounting) -> None:
    async for event in choice.iterate():
        if isinstance(event, TextDelta):
            acct.first_token()
            choice.text += event.text
            choice.logprobs.extend(event.logprobs)
        elif isinstance(event, Finished):
            choice.finish_reason = "stop" if event.finish_reason == "stop" else "length"
            choice.completion_tokens = event.completion_tokens
            acct.completion_tokens += event.completion_tokens


def _cancel_all(choices: list[_Choice]) -> None:
    for choice in choices:
        choice.handle.cancel()


def _engine_failure(exc: EngineError) -> APIError:
    logger.error("engine failure: %s", exc)
    return internal_error()


async def _run_to_end(choices: list[_Choice], acct: Accounting, attempt: _Attempt) -> None:
    """Wait for every choice of a non-streamed request (the caller writes the record)."""
    try:
        await _first_event(choices, attempt)
        await asyncio.gather(*(_drain(choice, acct) for choice in choices))
    except BaseException:
        _cancel_all(choices)
        raise


@dataclass(frozen=True)
class _ChunkShape:
    """How one endpoint frames its stream chunks (everything else is shared)."""

    object: str
    opening: Callable[[_Choice], dict | None]  # the chunk before any token, if any
    piece: Callable[[_Choice, str, dict | None], dict]  # a text delta
    closing: Callable[[_Choice, str], dict]  # finish_reason
    logprobs: Callable[[TextDelta], dict | None]


async def _stream_choices(
    choices: list[_Choice],
    acct: Accounting,
    meta: dict,
    shape: _ChunkShape,
    include_usage: bool,
    attempt: _Attempt,
) -> AsyncIterator[dict]:
    await _first_event(choices, attempt)
    return _streamed(choices, acct, meta, shape, include_usage)


async def _streamed(
    choices: list[_Choice], acct: Accounting, meta: dict, shape: _ChunkShape, include_usage: bool
) -> AsyncIterator[dict]:
    try:
        for choice in choices:
            opening = shape.opening(choice)
            if opening is not None:
                yield opening
            async for event in choice.iterate():
                if isinstance(event, TextDelta):
                    acct.first_token()
                    lp = shape.logprobs(event)
                    # Counted as handed to the server: a client that leaves
                    # pays for what it was sent, and nothing more.
                    acct.completion_tokens += event.n_tokens
                    if event.text or lp:
                        yield shape.piece(choice, event.text, lp)
                elif isinstance(event, Finished):
                    yield shape.closing(
                        choice, "stop" if event.finish_reason == "stop" else "length"
                    )
        if include_usage:
            yield {
                **_envelope(meta, shape.object),
                "choices": [],
                "usage": _usage(acct.prompt_tokens, acct.completion_tokens),
            }
    except BaseException as exc:
        acct.fail(exc)
        if not isinstance(exc, Exception):
            raise
        err = _engine_failure(exc) if isinstance(exc, EngineError) else to_api_error(exc)
        yield (err or internal_error()).body()
    finally:
        _cancel_all(choices)
        await acct.write()


def _envelope(meta: dict, obj: str) -> dict:
    """The fields every response and chunk opens with, in OpenAI's order."""
    return {
        "id": meta["id"],
        "object": obj,
        "created": meta["created"],
        "model": meta["model"],
        "system_fingerprint": meta["system_fingerprint"],
    }


def _chunk(meta: dict, obj: str, choice: dict, include_usage: bool) -> dict:
    body = {**_envelope(meta, obj), "choices": [choice]}
    if include_usage:
        body["usage"] = None
    return body


# -- /v1/completions --------------------------------------------------------------
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


async def completion_create(
    *, principal: Principal, data: dict, acct: Accounting
) -> dict | AsyncIterator[dict]:
    async def run(model: LLMModel, attempt: _Attempt):
        if model.is_remote:
            return await _remote_text(model, data, acct, attempt, kind="completions")
        return await _completion_local(model, data, acct, attempt)

    return await _serve(principal=principal, data=data, acct=acct, capability="completion", run=run)


async def _completion_local(model: LLMModel, data: dict, acct: Accounting, attempt: _Attempt):
    engine = await local_engine(model)
    prompts = [_tokenize_prompt(engine, item, "prompt") for item in data["prompt"]]
    longest = max(len(tokens) for tokens in prompts)
    max_tokens = _max_tokens(
        model, longest, data.get("max_tokens"), DEFAULT_COMPLETION_MAX_TOKENS, "prompt"
    )
    acct.prompt_tokens = sum(len(tokens) for tokens in prompts)
    n = data["n"]
    bias = _logit_bias(engine, data["logit_bias"])
    _check_capacity(engine, n * len(prompts))
    await _reserve(acct, model, max_tokens * n * len(prompts))
    logprobs = data.get("logprobs")
    jobs = []
    prompt_texts: list[str] = []
    for p_index, tokens in enumerate(prompts):
        item = data["prompt"][p_index]
        prompt_texts.append(item if isinstance(item, str) else engine.detokenize(tokens))
        for c in range(n):
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=data["temperature"],
                top_p=data["top_p"],
                seed=_seed_for(data.get("seed"), c),
                stop=tuple(data["stop"]),
                presence_penalty=data["presence_penalty"],
                frequency_penalty=data["frequency_penalty"],
                logprobs=logprobs,
                logit_bias=bias,
            )
            jobs.append((tokens, params))
    handles = await _submit_all(model, engine, jobs)
    choices = [_Choice(index, handle) for index, handle in enumerate(handles)]

    meta = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "created": _now(),
        "model": model.model_id,
        "system_fingerprint": _fingerprint(model),
    }
    echo = data.get("echo")

    if not data["stream"]:
        await _run_to_end(choices, acct, attempt)
        out = []
        for choice in choices:
            prefix = prompt_texts[choice.index // n] if echo else ""
            out.append(
                {
                    "text": prefix + choice.text,
                    "index": choice.index,
                    "logprobs": _completion_logprobs(choice.logprobs, len(prefix))
                    if logprobs is not None
                    else None,
                    "finish_reason": choice.finish_reason,
                }
            )
        return {
            **_envelope(meta, "text_completion"),
            "choices": out,
            "usage": _usage(acct.prompt_tokens, acct.completion_tokens),
        }

    include_usage = data["include_usage"]

    def chunk(index: int, text: str, finish: str | None, lp=None) -> dict:
        choice = {"text": text, "index": index, "logprobs": lp, "finish_reason": finish}
        return _chunk(meta, "text_completion", choice, include_usage)

    shape = _ChunkShape(
        object="text_completion",
        opening=lambda c: chunk(c.index, prompt_texts[c.index // n], None) if echo else None,
        piece=lambda c, text, lp: chunk(c.index, text, None, lp),
        closing=lambda c, finish: chunk(c.index, "", finish),
        logprobs=lambda e: _completion_logprobs(e.logprobs, 0) if logprobs is not None else None,
    )
    return await _stream_choices(choices, acct, meta, shape, include_usage, attempt)


# -- /v1/chat/completions ------------------------------------------------------------
def _json_grammar(response_format: dict | None) -> str | None:
    if not response_format or response_format["type"] == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format["type"] == "json_object":
        return JSON_GBNF
    schema = response_format["json_schema"].get("schema") or {}
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise InvalidRequest(
            f"Invalid schema for response_format 'json_schema': {exc}",
            param="response_format",
            code="invalid_value",
        ) from exc


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


async def chat_completion_create(
    *, principal: Principal, data: dict, acct: Accounting
) -> dict | AsyncIterator[dict]:
    async def run(model: LLMModel, attempt: _Attempt):
        if model.is_remote:
            return await _remote_text(model, data, acct, attempt, kind="chat/completions")
        return await _chat_local(model, data, acct, attempt)

    response_format = data.get("response_format") or {}
    json_mode = response_format.get("type") in ("json_object", "json_schema")
    return await _serve(
        principal=principal,
        data=data,
        acct=acct,
        capability="json" if json_mode else "chat",
        run=run,
    )


async def _chat_local(model: LLMModel, data: dict, acct: Accounting, attempt: _Attempt):
    engine = await local_engine(model)
    prompt = chat_prompt(engine, model, data["messages"], tools=data.get("tools"))
    tokens = prompt.tokens
    max_tokens = _max_tokens(model, len(tokens), data.get("max_tokens"), None, "messages")
    acct.prompt_tokens = len(tokens)
    grammar = _json_grammar(data.get("response_format"))
    logprobs = (data.get("top_logprobs") or 0) if data.get("logprobs") else None
    bias = _logit_bias(engine, data["logit_bias"])
    _check_capacity(engine, data["n"])
    await _reserve(acct, model, max_tokens * data["n"])
    jobs = []
    for c in range(data["n"]):
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=_seed_for(data.get("seed"), c),
            stop=tuple(data["stop"]) + prompt.stop,
            presence_penalty=data["presence_penalty"],
            frequency_penalty=data["frequency_penalty"],
            logprobs=logprobs,
            grammar=grammar,
            logit_bias=bias,
        )
        jobs.append((tokens, params))
    handles = await _submit_all(model, engine, jobs)
    choices = [_Choice(index, handle) for index, handle in enumerate(handles)]

    meta = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": _now(),
        "model": model.model_id,
        "system_fingerprint": _fingerprint(model),
    }

    if not data["stream"]:
        await _run_to_end(choices, acct, attempt)
        return {
            **_envelope(meta, "chat.completion"),
            "choices": [
                {
                    "index": choice.index,
                    "message": {"role": "assistant", "content": choice.text, "refusal": None},
                    "logprobs": _chat_logprobs(choice.logprobs) if logprobs is not None else None,
                    "finish_reason": choice.finish_reason,
                }
                for choice in choices
            ],
            "usage": _usage(acct.prompt_tokens, acct.completion_tokens),
        }

    include_usage = data["include_usage"]

    def chunk(index: int, delta: dict, finish: str | None, lp=None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return _chunk(meta, "chat.completion.chunk", choice, include_usage)

    shape = _ChunkShape(
        object="chat.completion.chunk",
        opening=lambda c: chunk(
            c.index, {"role": "assistant", "content": "", "refusal": None}, None
        ),
        piece=lambda c, text, lp: chunk(c.index, {"content": text}, None, lp),
        closing=lambda c, finish: chunk(c.index, {}, finish),
        logprobs=lambda e: _chat_logprobs(e.logprobs) if logprobs is not None else None,
    )
    return await _stream_choices(choices, acct, meta, shape, include_usage, attempt)


def _tokenize_chat(engine: LlamaEngine, chat_format: str, messages: list[dict]) -> list[int]:
    """A chat in a named hand-written format (client text never becomes control tokens)."""
    return format_prompt(engine, chat_format, messages).tokens


# -- /v1/embeddings ---------------------------------------------------------------------
async def embedding_create(*, principal: Principal, data: dict, acct: Accounting) -> dict:
    async def run(model: LLMModel, attempt: _Attempt):
        if model.is_remote:
            return await _remote_embeddings(model, data, acct)
        return await _embedding_local(model, data, acct, attempt)

    return await _serve(principal=principal, data=data, acct=acct, capability="embeddings", run=run)


async def _embedding_local(model: LLMModel, data: dict, acct: Accounting, attempt: _Attempt):
    engine = await local_engine(model)
    inputs = []
    for index, item in enumerate(data["input"]):
        tokens = _tokenize_prompt(engine, item, "input")
        if len(tokens) > model.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {model.n_ctx} tokens, however "
                f"input {index} has {len(tokens)} tokens. Please reduce its length.",
                param="input",
            )
        inputs.append(tokens)
    acct.prompt_tokens = sum(len(t) for t in inputs)
    _check_capacity(engine, 1)
    await _reserve(acct, model, 0)
    try:
        handle = engine.submit_embeddings(inputs)
    except EngineClosed:
        handle = (await local_engine(model)).submit_embeddings(inputs)
    result = None
    try:
        async for event in handle:
            if isinstance(event, EmbeddingResult):
                result = event
    except BaseException:
        handle.cancel()
        raise
    if result is None:
        raise internal_error()
    as_base64 = data["encoding_format"] == "base64"
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": _b64(vec) if as_base64 else vec,
            }
            for index, vec in enumerate(result.vectors)
        ],
        "model": model.model_id,
        "usage": {"prompt_tokens": acct.prompt_tokens, "total_tokens": acct.prompt_tokens},
    }


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# -- remote backends -------------------------------------------------------------------
# Fields that shape llmsite's own handling and are not sent upstream as they are.
_LOCAL_ONLY = {"include_usage", "stream_options", "max_completion_tokens", "model"}


def _upstream_body(model: LLMModel, data: dict, *, stream: bool) -> dict:
    body = {k: v for k, v in data.items() if k not in _LOCAL_ONLY and v is not None}
    body["model"] = model.remote_model or model.model_id
    body["stream"] = stream
    if stream:
        # Always ask for usage: it is what the tenant is billed for.
        body["stream_options"] = {"include_usage": True}
    return body


def _estimate_prompt_tokens(data: dict) -> int:
    """An upper bound of the prompt's tokens for the quota reservation only.

    The remote model's tokenizer is not here. A token covers at least one
    byte, so the UTF-8 length bounds the count (plus a few template tokens per
    message); settlement replaces it with the upstream's exact usage.
    """
    if "messages" in data:
        total = 2
        for message in data["messages"]:
            content = message.get("content") or ""
            if not isinstance(content, str):
                content = json.dumps(content)
            total += len(content.encode("utf-8")) + 6
        return total
    items = data.get("prompt", data.get("input", []))
    return sum(len(i) if isinstance(i, list) else len(i.encode("utf-8")) + 1 for i in items)


def _take_usage(acct: Accounting, usage: dict | None) -> bool:
    if not isinstance(usage, dict):
        return False
    acct.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    acct.completion_tokens = int(usage.get("completion_tokens") or 0)
    return True


async def _remote_text(
    model: LLMModel, data: dict, acct: Accounting, attempt: _Attempt, *, kind: str
) -> dict | AsyncIterator[dict]:
    backend = RemoteBackend(model)
    estimate = _estimate_prompt_tokens(data)
    acct.prompt_tokens = estimate
    n = data.get("n") or 1
    prompts = len(data.get("prompt") or [None])
    requested = data.get("max_tokens")
    room = max(1, model.n_ctx - estimate) if requested is None else requested
    await _reserve(acct, model, room * n * prompts)
    path = f"/{kind}"
    if not data["stream"]:
        result = await asyncio.wait_for(
            backend.post(path, _upstream_body(model, data, stream=False)), attempt.timeout
        )
        if not _take_usage(acct, result.get("usage")):
            raise BackendUnavailable(f"The backend serving `{model.model_id}` reported no usage.")
        return result
    stream = await asyncio.wait_for(
        backend.stream(path, _upstream_body(model, data, stream=True)), attempt.timeout
    )
    try:
        first = await asyncio.wait_for(anext(stream), attempt.timeout)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stream.aclose()
        raise
    return _remote_streamed(model, stream, first, acct, data["include_usage"])


async def _remote_streamed(
    model: LLMModel, stream, first: dict | None, acct: Accounting, include_usage: bool
) -> AsyncIterator[dict]:
    exact = False
    delivered = 0  # content chunks, one per token from llama.cpp-based servers
    try:
        pending = [first] if first is not None else []
        while True:
            if pending:
                chunk = pending.pop()
            else:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    break
            if "error" in chunk:
                acct.status, acct.error_code = "error", "upstream_error"
                yield chunk
                return
            chunk["model"] = model.model_id
            if _take_usage(acct, chunk.get("usage")):
                exact = True
            if not chunk.get("choices"):
                if include_usage and chunk.get("usage"):
                    yield chunk
                continue
            if any(_has_content(c) for c in chunk["choices"]):
                acct.first_token()
                delivered += 1
                if not exact:
                    acct.completion_tokens = delivered
            if not include_usage:
                chunk.pop("usage", None)
            yield chunk
    except BaseException as exc:
        acct.fail(exc)
        if not isinstance(exc, Exception):
            raise
        yield (to_api_error(exc) or internal_error()).body()
    finally:
        await stream.aclose()
        await acct.write()


def _has_content(choice: dict) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content"))
    return bool(choice.get("text"))


async def _remote_embeddings(model: LLMModel, data: dict, acct: Accounting) -> dict:
    acct.prompt_tokens = _estimate_prompt_tokens(data)
    await _reserve(acct, model, 0)
    result = await RemoteBackend(model).post(
        "/embeddings", _upstream_body(model, data, stream=False)
    )
    result.pop("stream", None)
    usage = result.get("usage") or {}
    acct.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    return result
