"""Chat completions over a WebSocket: `ws://HOST/v1/realtime/chat`.

Protocol (JSON messages):
- authenticate first, with `{"type": "auth", "token": "...", "tenant": "slug"?}` or
  by offering the subprotocols `["llmsite.bearer", "<token>"]` (never in the URL);
  a bad credential gets an error event and close code 4401; a socket that has
  not authenticated within LLMSITE_WS_AUTH_TIMEOUT seconds is closed with 4401;
- every request message checks the credential again (the same key cache and
  generation counters as REST, so it costs no query while nothing changed): a
  key revoked, expired or rotated out, an expired access token, a removed
  member or a deactivated tenant closes the socket with 4401, and a changed
  plan or limit applies to the next request;
- `{"type": "chat.completion.create", "request_id": "...", "body": {...}}` where
  `body` is a /v1/chat/completions body; the server answers with
  `{"type": "chat.completion.chunk", "request_id", "chunk"}` (the SSE chunk) and
  finally `{"type": "chat.completion.done", "request_id", "usage", "finish_reason"}`;
- `{"type": "response.create", "request_id": "...", "body": {...}}` where `body` is a
  /v1/responses body (always streamed, stored as over REST); the server answers
  with `{"type": "response.event", "request_id", "event"}` for each of the SSE
  stream's events, the last one `response.completed`, `response.incomplete` or
  `response.failed` (a cancelled one ends with `{"type": "response.cancelled",
  "request_id"}`);
- `{"type": "cancel", "request_id"}` stops that generation within a decode step;
- errors are `{"type": "error", "request_id", "error": {...}}`;
- `{"type": "ping"}` is answered with `{"type": "pong"}`.

Several requests run at once on one socket (up to MAX_ACTIVE), multiplexed by
request_id; closing the socket cancels all of them. Quotas and usage records are
exactly those of REST: the same services run underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from rest_framework.exceptions import ParseError

from accounts.authentication import principal_check_inference, principal_from_token
from inference import responses, services
from inference.services import Accounted, StreamError
from llmsite.errors import APIError, InvalidRequest, RateLimited, internal_error
from llmsite.middleware import REQUEST_ID as _REQUEST_ID
from llmsite.parsers import check_json_value

logger = logging.getLogger("llmsite.inference")

SUBPROTOCOL = "llmsite.bearer"
CLOSE_UNAUTHORIZED = 4401
MAX_ACTIVE = 4


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.principal = None
        self.credential: tuple[str, str] = ("", "")
        self.tasks: dict[str, asyncio.Task] = {}
        self.auth_deadline: asyncio.TimerHandle | None = None
        offered = list(self.scope.get("subprotocols") or [])
        if SUBPROTOCOL in offered:
            tokens = [p for p in offered if p != SUBPROTOCOL]
            await self.accept(subprotocol=SUBPROTOCOL)
            await self._authenticate(tokens[0] if tokens else "", self._query_tenant())
        else:
            await self.accept()
            # An idle unauthenticated socket holds a connection and a consumer for
            # nothing: it gets a bounded time to say who it is.
            self.auth_deadline = asyncio.get_running_loop().call_later(
                settings.LLMSITE_WS_AUTH_TIMEOUT, self._auth_timed_out
            )

    def _auth_timed_out(self) -> None:
        if self.principal is None:
            self.auth_timeout_task = asyncio.ensure_future(
                self._reject(
                    InvalidRequest(
                        "Authentication timed out: send an auth message first.", code="auth_timeout"
                    )
                )
            )

    async def disconnect(self, code) -> None:
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        # A closed socket cancels everything still running on it; wait for the
        # cancellations so every request's usage record is written.
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        # The same guards as the REST parser: bounded nesting, no NUL (which the
        # database cannot store in a usage record), and a bad message is an error
        # event, never a dead consumer.
        try:
            if text_data is None:
                raise ValueError("binary frames are not part of the protocol")
            content = await self.decode_json(text_data)
            check_json_value(content)
        except (ValueError, RecursionError, ParseError) as exc:
            await self._error(
                None,
                InvalidRequest(f"Invalid message: {exc}", param="message", code="invalid_json"),
            )
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "ping":
            await self.send_json({"type": "pong"})
            return
        if kind == "auth":
            if self.principal is not None:
                await self._error(None, InvalidRequest("Already authenticated."))
                return
            await self._authenticate(
                str(content.get("token") or ""), str(content.get("tenant") or "")
            )
            return
        if self.principal is None:
            await self._reject(InvalidRequest('Authenticate first: {"type": "auth", ...}.'))
            return
        request_id = content.get("request_id")
        if kind == "chat.completion.create":
            await self._create(request_id, content.get("body"), self._run)
        elif kind == "response.create":
            await self._create(request_id, content.get("body"), self._run_response)
        elif kind == "cancel":
            task = self.tasks.get(request_id) if isinstance(request_id, str) else None
            if task is not None:
                task.cancel()
        else:
            await self._error(
                request_id if isinstance(request_id, str) else None,
                InvalidRequest(f"Unknown message type: {kind!r}.", param="type"),
            )

    # -- auth -------------------------------------------------------------------------
    def _query_tenant(self) -> str:
        query = self.scope.get("query_string", b"").decode()
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name == "tenant":
                return value
        return ""

    async def _principal(self, token: str, tenant: str):
        client = self.scope.get("client") or [None]
        principal = await database_sync_to_async(principal_from_token)(
            token, tenant_slug=tenant, ip=client[0]
        )
        principal_check_inference(
            principal, tenant_param="tenant", tenant_hint='"tenant" in the auth message'
        )
        return principal

    async def _authenticate(self, token: str, tenant: str) -> None:
        try:
            principal = await self._principal(token, tenant)
        except APIError as exc:
            await self._reject(exc)
            return
        self.principal = principal
        self.credential = (token, tenant)
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        await self.send_json({"type": "auth.ok", "tenant": principal.tenant.slug})

    async def _reauthenticate(self) -> bool:
        """Check the socket's credential again before a request: a socket lives long,
        and what REST would refuse now it must refuse too."""
        try:
            self.principal = await self._principal(*self.credential)
        except APIError as exc:
            self.principal = None
            await self._reject(exc)
            return False
        return True

    async def _reject(self, exc: APIError) -> None:
        await self._error(None, exc)
        await self.close(code=CLOSE_UNAUTHORIZED)

    # -- requests -------------------------------------------------------------------------
    async def _create(self, request_id, body, run) -> None:
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            await self._error(
                None,
                InvalidRequest(
                    "request_id must be 1-128 characters of letters, digits and . _ : -",
                    param="request_id",
                ),
            )
            return
        if request_id in self.tasks:
            await self._error(
                request_id,
                InvalidRequest(f"request_id {request_id} is already running.", param="request_id"),
            )
            return
        if len(self.tasks) >= MAX_ACTIVE:
            await self._error(
                request_id,
                RateLimited(f"At most {MAX_ACTIVE} requests run at once on one connection."),
            )
            return
        if not await self._reauthenticate():
            return
        self.tasks[request_id] = asyncio.create_task(run(request_id, body))

    async def _run(self, request_id: str, body) -> None:
        body = body if isinstance(body, dict) else {}
        result = None
        finish = None
        cancelled = False
        try:
            result = await services.chat_completion_create(
                principal=self.principal,
                body={**body, "stream": True},
                request_id=f"ws_{uuid.uuid4().hex}",
            )
            async for item in result.events:
                if isinstance(item, StreamError):
                    await self.send_json(
                        {"type": "error", "request_id": request_id, **item.error.body()}
                    )
                    return
                if item["choices"]:
                    finish = item["choices"][0].get("finish_reason") or finish
                await self.send_json(
                    {"type": "chat.completion.chunk", "request_id": request_id, "chunk": item}
                )
        except asyncio.CancelledError:
            cancelled = True
        except APIError as exc:  # the service recorded it
            await self._error(request_id, exc)
            return
        except Exception:
            logger.exception("unhandled error in WebSocket request %s", request_id)
            await self._error(request_id, internal_error())
            return
        finally:
            if result is not None:
                await result.aclose()  # frees the engine and writes the usage record
            self.tasks.pop(request_id, None)
        accounted = result.accounted if result is not None else Accounted()
        await self._send_done(request_id, accounted, "cancelled" if cancelled else finish)

    async def _run_response(self, request_id: str, body) -> None:
        """A /v1/responses request: the SSE stream's events, one message each."""
        body = {**body, "stream": True} if isinstance(body, dict) else body
        record_id = f"ws_{uuid.uuid4().hex}"
        stream = events = None
        try:
            try:
                plan = await database_sync_to_async(responses.response_plan)(
                    body, tenant=self.principal.tenant
                )
            except APIError as exc:
                raise await services.request_refuse(
                    principal=self.principal,
                    endpoint=responses.ENDPOINT,
                    request_id=record_id,
                    error=exc,
                    body=body,
                ) from exc
            stream = await services.chat_completion_create(
                principal=self.principal,
                body=plan.chat,
                request_id=record_id,
                endpoint=responses.ENDPOINT,
            )
            events = responses.response_events(stream, plan)
            async for event in events:
                await self.send_json(
                    {"type": "response.event", "request_id": request_id, "event": event}
                )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the socket may be gone
                await self.send_json({"type": "response.cancelled", "request_id": request_id})
        except APIError as exc:  # the service recorded it
            await self._error(request_id, exc)
        except Exception:
            logger.exception("unhandled error in WebSocket request %s", request_id)
            await self._error(request_id, internal_error())
        finally:
            if events is not None:
                await events.aclose()  # closes the stream: frees the engine, writes the record
            elif stream is not None:
                await stream.aclose()
            self.tasks.pop(request_id, None)

    async def _send_done(self, request_id: str, accounted: Accounted, finish) -> None:
        # The socket may already be gone (a disconnect cancelled this request).
        with contextlib.suppress(Exception):
            await self.send_json(
                {
                    "type": "chat.completion.done",
                    "request_id": request_id,
                    "usage": {
                        "prompt_tokens": accounted.prompt_tokens,
                        "completion_tokens": accounted.completion_tokens,
                        "total_tokens": accounted.total_tokens,
                    },
                    "finish_reason": finish,
                }
            )

    async def _error(self, request_id: str | None, exc: APIError) -> None:
        event = {"type": "error", "request_id": request_id, **exc.body()}
        retry = exc.headers.get("Retry-After")
        if retry is not None:
            event["retry_after"] = int(retry)  # what REST says in the Retry-After header
        await self.send_json(event)
