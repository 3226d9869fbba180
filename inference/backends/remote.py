"""OpenAI-compatible remote backends: another llmsite, llama-server, vLLM.

One pooled httpx client per base URL and event loop. Failures that another
backend could do better on (refused connection, timeout, 5xx, 429, a key or
model the upstream does not know) raise BackendUnavailable, which the router
answers by falling back. A request the upstream rejects as invalid (400, 413,
422) is relayed as it said it. Closing a stream closes the upstream
connection, which is how a client's disconnect cancels the remote generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from django.conf import settings

from inference.backends.base import (
    Embeddings,
    Event,
    Finish,
    GenerateRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from inference.models import LLMModel
from llmsite.errors import APIError, BackendUnavailable, InvalidRequest, UpstreamRejected

logger = logging.getLogger("llmsite.remote")

_clients: dict[tuple[int, str], tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}

RELAYED = {400, 413, 422}


def _client(base_url: str) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    for key, (owner, _) in list(_clients.items()):
        if owner.is_closed():  # its connections died with the loop
            del _clients[key]
    entry = _clients.get((id(loop), base_url))
    if entry is not None and not entry[1].is_closed:
        return entry[1]
    client = httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(
            settings.LLMSITE_REMOTE_TIMEOUT, connect=settings.LLMSITE_REMOTE_CONNECT_TIMEOUT
        ),
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )
    _clients[(id(loop), base_url)] = (loop, client)
    return client


class RemoteBackend:
    def __init__(self, model: LLMModel) -> None:
        self.model = model
        self.base_url = model.base_url.rstrip("/")
        self.upstream_model = model.remote_model or model.model_id

    async def prepare(self, request: GenerateRequest) -> RemoteGeneration:
        data = request.data
        estimate = estimate_prompt_tokens(data)
        n = data.get("n") or 1
        prompts = len(data.get("prompt") or [None])
        requested = data.get("max_tokens")
        room = max(1, self.model.n_ctx - estimate) if requested is None else requested
        return RemoteGeneration(
            backend=self,
            path=f"/{request.kind}",
            data=data,
            prompt_tokens=estimate,
            reserve_tokens=room * n * prompts,
            n=n,
        )

    async def embed(self, data: dict, *, owner: str | None = None) -> RemoteEmbeddingJob:
        return RemoteEmbeddingJob(self, data, estimate_prompt_tokens(data))

    async def tokenize(self, text: str) -> list[int]:
        raise self._no_tokenizer()

    async def tokenizer(self):
        raise self._no_tokenizer()

    def _no_tokenizer(self) -> InvalidRequest:
        return InvalidRequest(
            f"The model `{self.model.model_id}` is served remotely: its tokenizer is not here.",
            param="model",
            code="unsupported_model",
        )

    def _headers(self) -> dict[str, str]:
        key = self.model.remote_api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _unavailable(self, why: str) -> BackendUnavailable:
        # The base URL is operator configuration, not a secret; the key never appears.
        logger.warning("remote backend for %s (%s): %s", self.model.model_id, self.base_url, why)
        return BackendUnavailable(
            f"The backend serving `{self.model.model_id}` {why}.",
            headers={"Retry-After": "5"},
        )

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        body = await response.aread()
        try:
            error = json.loads(body).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        if response.status_code in RELAYED:
            raise UpstreamRejected(
                str(error.get("message") or "The request was rejected by the model's backend."),
                status=response.status_code,
                param=error.get("param"),
                code=error.get("code"),
            )
        raise self._unavailable(f"answered HTTP {response.status_code}")

    async def post(self, path: str, body: dict) -> dict:
        try:
            response = await _client(self.base_url).post(path, json=body, headers=self._headers())
            await self._check(response)
            return response.json()
        except httpx.TimeoutException as exc:
            raise self._unavailable("timed out") from exc
        except httpx.HTTPError as exc:
            raise self._unavailable(f"could not be reached ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise self._unavailable("answered with invalid JSON") from exc

    async def stream(self, path: str, body: dict) -> RemoteStream:
        """Open a streamed call; returns once the upstream answered with its headers."""
        client = _client(self.base_url)
        request = client.build_request("POST", path, json=body, headers=self._headers())
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise self._unavailable("timed out") from exc
        except httpx.HTTPError as exc:
            raise self._unavailable(f"could not be reached ({type(exc).__name__})") from exc
        try:
            await self._check(response)
        except BaseException:
            await response.aclose()
            raise
        return RemoteStream(self, response)


class RemoteStream:
    """The upstream's SSE events as parsed JSON objects, until `[DONE]`."""

    def __init__(self, backend: RemoteBackend, response: httpx.Response) -> None:
        self.backend = backend
        self.response = response
        self._lines = response.aiter_lines()

    def __aiter__(self) -> AsyncIterator[dict]:
        return self

    async def __anext__(self) -> dict:
        try:
            while True:
                line = await self._lines.__anext__()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    raise StopAsyncIteration
                return json.loads(data)
        except StopAsyncIteration:
            raise
        except httpx.TimeoutException as exc:
            raise self.backend._unavailable("timed out mid-stream") from exc
        except httpx.HTTPError as exc:
            raise self.backend._unavailable("dropped the stream") from exc
        except ValueError as exc:
            raise self.backend._unavailable("sent an unparseable stream event") from exc

    async def aclose(self) -> None:
        await self.response.aclose()


# -- the backend -------------------------------------------------------------------
# Fields that shape llmsite's own handling and are not sent upstream as they are.
_LOCAL_ONLY = {"include_usage", "stream_options", "max_completion_tokens", "model"}


def upstream_body(model: LLMModel, data: dict, *, stream: bool) -> dict:
    body = {k: v for k, v in data.items() if k not in _LOCAL_ONLY and v is not None}
    body["model"] = model.remote_model or model.model_id
    body["stream"] = stream
    if stream:
        # Always ask for usage: it is what the tenant is billed for.
        body["stream_options"] = {"include_usage": True}
    return body


def estimate_prompt_tokens(data: dict) -> int:
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


def _usage_event(usage) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _logprob_entries(logprobs) -> tuple:
    """The upstream's logprobs (chat or completion shape) as TokenLogprob entries."""
    if not isinstance(logprobs, dict):
        return ()
    if isinstance(logprobs.get("content"), list):  # chat
        return tuple(
            TokenLogprob(
                token=e.get("token", ""),
                bytes=e.get("bytes"),
                logprob=e.get("logprob", 0.0),
                top=[
                    (t.get("token", ""), t.get("bytes"), t.get("logprob", 0.0))
                    for t in e.get("top_logprobs") or []
                ],
            )
            for e in logprobs["content"]
        )
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    return tuple(
        TokenLogprob(
            token=token,
            bytes=list(token.encode()),
            logprob=values[i] if i < len(values) else 0.0,
            top=[
                (t, list(t.encode()), lp)
                for t, lp in ((tops[i] or {}) if i < len(tops) else {}).items()
            ],
        )
        for i, token in enumerate(tokens)
    )


def _choice_text(choice: dict) -> str:
    delta = choice.get("delta") if "delta" in choice else choice.get("message")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


def _tool_call_events(index: int, choice: dict) -> list[ToolCallDelta]:
    """The upstream's `tool_calls` (a whole message's, or a chunk's pieces) as events."""
    message = choice.get("delta") if "delta" in choice else choice.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list):
        return []
    out = []
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):  # some servers send the object itself
            arguments = "" if arguments is None else json.dumps(arguments)
        call_index = call.get("index")
        out.append(
            ToolCallDelta(
                index=index,
                call_index=call_index if isinstance(call_index, int) else position,
                id=call.get("id") if isinstance(call.get("id"), str) else None,
                name=function.get("name") if isinstance(function.get("name"), str) else None,
                arguments=arguments,
            )
        )
    return out


def _choice_events(choice: dict) -> list[Event]:
    index = int(choice.get("index") or 0)
    out: list[Event] = []
    text = _choice_text(choice)
    entries = _logprob_entries(choice.get("logprobs"))
    calls = _tool_call_events(index, choice)
    if text or entries or calls:
        # One chunk per token from llama.cpp-based servers: the count until the
        # upstream's exact usage arrives.
        out.append(TextDelta(index, text, 1 if text or calls else 0, entries))
    out.extend(calls)
    if choice.get("finish_reason"):
        # OpenAI's shape says "stop" for a stop string and for the model's own
        # end alike: which stop string matched is unknown here.
        out.append(Finish(index, choice["finish_reason"]))
    return out


class UpstreamStreamError(APIError):
    """An error event in the upstream's stream, relayed as it said it."""

    record_code = "upstream_error"

    def __init__(self, error: dict) -> None:
        super().__init__(
            str(error.get("message") or "The model's backend failed."),
            param=error.get("param"),
            code=error.get("code"),
        )
        self.type = str(error.get("type") or "server_error")


@dataclass(eq=False)
class RemoteGeneration:
    backend: RemoteBackend
    path: str
    data: dict
    prompt_tokens: int
    reserve_tokens: int
    n: int
    prompt_texts: list[str] | None = None  # the upstream echoes the prompt itself
    _stream: RemoteStream | None = None
    _whole: list[Event] = field(default_factory=list)
    _first: dict | None = None

    async def start(self, timeout: float | None) -> None:
        model = self.backend.model
        if not self.data["stream"]:
            result = await asyncio.wait_for(
                self.backend.post(self.path, upstream_body(model, self.data, stream=False)),
                timeout,
            )
            usage = _usage_event(result.get("usage"))
            if usage is None:
                raise BackendUnavailable(
                    f"The backend serving `{model.model_id}` reported no usage."
                )
            for choice in result.get("choices") or []:
                self._whole.extend(_choice_events(choice))
            self._whole.append(usage)
            return
        self._stream = await asyncio.wait_for(
            self.backend.stream(self.path, upstream_body(model, self.data, stream=True)), timeout
        )
        try:
            self._first = await asyncio.wait_for(anext(self._stream), timeout)
        except StopAsyncIteration:
            self._first = None
        except BaseException:
            await self._stream.aclose()
            raise

    async def events(self) -> AsyncIterator[Event]:
        if self._stream is None:
            for event in self._whole:
                yield event
            return
        stream = self._stream
        try:
            pending = [self._first] if self._first is not None else []
            while True:
                if pending:
                    chunk = pending.pop()
                else:
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        break
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                    raise UpstreamStreamError(error)
                for choice in chunk.get("choices") or []:
                    for event in _choice_events(choice):
                        yield event
                usage = _usage_event(chunk.get("usage"))
                if usage is not None:
                    yield usage
        finally:
            await stream.aclose()

    async def close(self) -> None:
        # Closing the upstream connection is what cancels a remote generation.
        if self._stream is not None:
            await self._stream.aclose()


@dataclass(eq=False)
class RemoteEmbeddingJob:
    backend: RemoteBackend
    data: dict
    prompt_tokens: int

    async def run(self) -> Embeddings:
        body = upstream_body(self.backend.model, self.data, stream=False)
        body.pop("encoding_format", None)  # floats; llmsite encodes base64 itself
        result = await self.backend.post("/embeddings", body)
        try:
            rows = sorted(result["data"], key=lambda row: row.get("index", 0))
            vectors = [list(row["embedding"]) for row in rows]
        except (KeyError, TypeError) as exc:
            raise self.backend._unavailable("answered with no embeddings") from exc
        usage = result.get("usage") or {}
        return Embeddings(vectors=vectors, prompt_tokens=int(usage.get("prompt_tokens") or 0))
