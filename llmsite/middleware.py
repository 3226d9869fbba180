"""Request id, processing time, body-size limit and request metrics on every response."""

from __future__ import annotations

import re
import time
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig

from llmsite import prometheus
from llmsite.errors import InvalidRequest, RequestTooLarge, error_response

# What a client-chosen request id may be (X-Request-Id here; the WebSocket
# consumer's request_id too): safe to echo in headers and logs.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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
        started = time.perf_counter()
        request.request_id = _request_id(request)
        response = _too_large(request) or _nul_in_url(request) or await self.get_response(request)
        return _finish(request, response, started)
