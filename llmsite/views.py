"""The playground page, the liveness probe and the JSON error pages."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render

from llmsite.errors import NotFound, error_response, internal_error
from llmsite.health import health_report


def playground(request):
    """The browser playground: static HTML and JS; all data goes through the API."""
    return render(request, "playground.html", {"default_model": settings.LLMSITE_DEFAULT_MODEL})


async def health(request):
    return JsonResponse(health_report())


def not_found(request, exception=None):
    return error_response(NotFound(f"Unknown URL: {request.method} {request.path}"))


def server_error(request):
    return error_response(internal_error())
