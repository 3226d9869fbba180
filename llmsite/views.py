"""Operations endpoints and the JSON error pages."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render

from inference.registry import registry
from llmsite.errors import NotFound, ServiceUnavailable, error_response, internal_error


def playground(request):
    """The browser playground: static HTML and JS; all data goes through the API."""
    return render(request, "playground.html", {"default_model": settings.LLMSITE_DEFAULT_MODEL})


async def health(request):
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


async def ready(request):
    db_ok = await sync_to_async(_database_ok)()
    model_ok = registry.get_loaded(settings.LLMSITE_DEFAULT_MODEL) is not None
    if db_ok and model_ok:
        return JsonResponse({"status": "ready", "database": "ok", "models": registry.loaded_ids()})
    reasons = []
    if not db_ok:
        reasons.append("the database does not answer")
    if not model_ok:
        reasons.append(f"the default model `{settings.LLMSITE_DEFAULT_MODEL}` is not loaded")
    return error_response(
        ServiceUnavailable(f"Not ready: {'; '.join(reasons)}.", headers={"Retry-After": "5"})
    )


def not_found(request, exception=None):
    return error_response(NotFound(f"Unknown URL: {request.method} {request.path}"))


def server_error(request):
    return error_response(internal_error())
