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

import httpx
from django.conf import settings

from inference.models import LLMModel
from llmsite.errors import BackendUnavailable, UpstreamRejected

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
