"""While `manage.py serve` drains (SIGTERM), gateways take no new requests."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from llmsite.errors import ServiceUnavailable, error_response


def _draining() -> bool:
    from inference.registry import registry

    return registry.draining


def _refusal():
    response = error_response(
        ServiceUnavailable(
            "The server is shutting down; retry on another instance or shortly.",
            code="server_shutting_down",
            headers={"Retry-After": "5"},
        )
    )
    response["Connection"] = "close"
    return response


def refuse_while_draining(get_response):
    """A 503 with Retry-After for every request that arrives while draining;
    requests already in flight finish."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            if _draining():
                return _refusal()
            return await get_response(request)

        return markcoroutinefunction(middleware)

    def sync_middleware(request):
        if _draining():
            return _refusal()
        return get_response(request)

    return sync_middleware


refuse_while_draining.sync_capable = True  # type: ignore[attr-defined]
refuse_while_draining.async_capable = True  # type: ignore[attr-defined]
