"""Request id, processing time, body-size limit and request metrics on every response."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import RequestDataTooBig
from django.middleware import clickjacking, common, csrf, security
from whitenoise.middleware import WhiteNoiseMiddleware

from llmsite import prometheus
from llmsite.errors import InvalidRequest, RequestTooLarge, error_response

# What a client-chosen request id may be (X-Request-Id here; the WebSocket
# consumer's request_id too): safe to echo in headers and logs.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class _Ownership:
    taken = False
    arriving = False  # counted in _arriving until routed or ended


# Per request: whether a service has taken it (and so owes its usage record).
# A mutable holder, so that a service running in a task of its own (a batch
# item) marks the request its context was copied from.
_ownership: ContextVar[_Ownership | None] = ContextVar("llmsite_request_ownership", default=None)


# POSTs to /v1 that this process has received and not yet routed to a model.
# An idle engine counts them as on their way (the admission window in
# inference.backends.local): a burst of simultaneous requests spreads out over
# the milliseconds each spends in middleware and authentication, and without
# them the first would be prefilled alone.
_arriving = 0


def requests_arriving() -> int:
    return _arriving


def _no_longer_arriving(ownership: _Ownership | None) -> None:
    global _arriving
    if ownership is not None and ownership.arriving:
        ownership.arriving = False
        _arriving -= 1


def request_routed() -> None:
    """Called when this request reaches a model's backend: no longer arriving."""
    _no_longer_arriving(_ownership.get())


def request_taken() -> None:
    """Called by the service that takes this request: from now on it accounts
    for it (one usage record), however the request ends."""
    ownership = _ownership.get()
    if ownership is not None:
        ownership.taken = True


def _request_id(request) -> str:
    supplied = request.headers.get("X-Request-Id", "")
    if REQUEST_ID.match(supplied):
        return supplied
    return f"req_{uuid.uuid4().hex}"


def _too_large(request):
    """A 413 response when the body is over the limit, else None.

    Content-Length is checked first so an oversized upload is refused without
    reading it; bodies without one are bounded by DATA_UPLOAD_MAX_MEMORY_SIZE.
    """
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    try:
        if length > settings.MAX_BODY_BYTES:
            raise RequestDataTooBig
        if request.method in {"POST", "PUT", "PATCH"}:
            request.body  # noqa: B018 - reads (and bounds) the body once
    except RequestDataTooBig:
        return error_response(
            RequestTooLarge(
                f"The request body is larger than {settings.MAX_BODY_BYTES} bytes.",
            )
        )
    return None


def _nul_in_url(request):
    """A 400 when the path or query string holds a NUL: PostgreSQL refuses it in any
    lookup (a 500), and no id, slug or name here has one. Bodies: llmsite.parsers."""
    if "\x00" in request.path or any(
        "\x00" in item for pair in request.GET.lists() for item in (pair[0], *pair[1])
    ):
        return error_response(
            InvalidRequest("The URL may not contain NUL (%00).", code="invalid_url")
        )
    return None


def _finish(request, response, started: float):
    elapsed = time.perf_counter() - started
    response["x-request-id"] = request.request_id
    response["openai-processing-ms"] = str(int(elapsed * 1000))
    # Server Timing (W3C): a service may have named its stages; `total` is this
    # middleware's span, so what the stages leave of it is the gateway's own.
    total = f"total;dur={elapsed * 1000:.2f}"
    stages = response.get("Server-Timing")
    response["Server-Timing"] = f"{stages}, {total}" if stages else total
    match = getattr(request, "resolver_match", None)
    prometheus.http_observe(
        # The URL pattern, not the path: one label per route, whatever the ids in it.
        route=match.route if match is not None else "",
        status=response.status_code,
        model=response.get("x-llmsite-model", ""),
        seconds=elapsed,
    )
    return response


class request_context:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        started = time.perf_counter()
        request.request_id = _request_id(request)
        response = _too_large(request) or _nul_in_url(request) or self.get_response(request)
        return _finish(request, response, started)

    async def __acall__(self, request):
        global _arriving
        started = time.perf_counter()
        request.request_id = _request_id(request)
        ownership = _Ownership()
        if request.method == "POST" and request.path.startswith("/v1/"):
            ownership.arriving = True
            _arriving += 1
        token = _ownership.set(ownership)
        try:
            response = (
                _too_large(request) or _nul_in_url(request) or await self.get_response(request)
            )
        except asyncio.CancelledError:
            # Django cancels the view when the client disconnects (`http.disconnect`)
            # before the response began. A service that took the request records it;
            # one that never got it leaves nothing else to show it existed.
            if not ownership.taken:
                prometheus.REQUESTS_ABANDONED.inc()
            raise
        finally:
            _no_longer_arriving(ownership)  # if it ended unrouted: refused, invalid, gone
            _ownership.reset(token)
        return _finish(request, response, started)


class StaticFiles(WhiteNoiseMiddleware):
    """WhiteNoise, without making every request cross to a thread and back.

    WhiteNoise's middleware is sync-only, so under ASGI Django runs it in a
    worker thread and the rest of the chain (views included) back on the loop
    through async_to_sync: two thread crossings on every /v1 request, for a
    dictionary lookup. Here the lookup runs on the loop and only a static file
    is served from a thread (autorefresh, in development, also looks on disk:
    that goes to the thread too).
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


# -- Django's own middleware, with its hooks on the event loop -------------------
# Under ASGI, Django runs every sync hook of a MiddlewareMixin in a thread: seven
# middlewares made fifteen thread crossings per request, each a wait for a thread
# and for the GIL, for hooks that set a header or read a cookie. These subclasses
# run the hooks in place, and cross to a thread only where a hook may reach the
# database for this request (a session to save, messages to store in it).
class _OnTheLoop:
    get_response: Any

    def _response_may_block(self, request) -> bool:
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self._response_may_block(request):
                response = await sync_to_async(self.process_response)(request, response)
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    pass


class SessionMiddleware(_OnTheLoop, sessions.SessionMiddleware):
    def _response_may_block(self, request) -> bool:
        # A session is read lazily (not here) and saved only when modified.
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(_OnTheLoop, csrf.CsrfViewMiddleware):
    # The token is in a cookie (CSRF_USE_SESSIONS is off), and the form body is
    # already read by the ASGI handler: checking it does no I/O.
    async def process_view(self, request, callback, callback_args, callback_kwargs):  # type: ignore[override]
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(_OnTheLoop, auth.AuthenticationMiddleware):
    pass  # the user is loaded lazily, by whatever reads it


class MessageMiddleware(_OnTheLoop, messages.MessageMiddleware):
    def _response_may_block(self, request) -> bool:
        # Storing messages may load the session; untouched messages store nothing.
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass
