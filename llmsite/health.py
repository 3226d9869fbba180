"""GET /health: liveness, plus what the apps report about themselves.

This base package imports no app, so each app registers a source at ready()
(inference: how many models are loaded, and in which states). A source must
answer from memory, without I/O: the probe answers fast and never fails
because a source did. Nothing sensitive goes in: the endpoint needs no key.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

logger = logging.getLogger("llmsite.health")

HealthSource = Callable[[], Mapping[str, Any]]
_sources: list[HealthSource] = []


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("llmsite")
    except importlib.metadata.PackageNotFoundError:
        return str(settings.SPECTACULAR_SETTINGS.get("VERSION", ""))


def health_source_register(source: HealthSource) -> None:
    """Add `source()`'s fields to every /health answer (once per source)."""
    if source not in _sources:
        _sources.append(source)


def health_report() -> dict[str, Any]:
    """`status` and `timestamp` (the names LLM-Runner-Router's /health uses),
    llmsite's version, and the registered sources' fields."""
    body: dict[str, Any] = {
        "status": "healthy",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "version": _version(),
    }
    for source in _sources:
        try:
            body.update(source())
        except Exception:  # liveness must not depend on a report
            logger.exception("health source %r failed", source)
    return body
