"""This process's Prometheus registry, and the HTTP-level metrics every response feeds.

The request middleware observes each response here (route, status, answering
model). The apps register their own metrics and scrape-time collectors on
`REGISTRY` (inference.telemetry: tokens, latency, engines), so this base
package needs no app to count requests.

Everything lives in one CollectorRegistry of this process. Under several daphne
processes each one is scraped on its own (or put behind one scrape target per
process); their counters are summed in Prometheus, not here.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)

STARTED_AT = time.time()
_STARTED_MONOTONIC = time.monotonic()

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "llmsite_http_requests",
    "HTTP responses, by URL route, status code and the model that answered.",
    ["route", "status", "model"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "llmsite_http_request_duration_seconds",
    "Time to the response headers, by URL route (a stream's body is not included).",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

# Requests whose client left before any response began and before any service
# took them (nothing reserved, generated or recorded): without this count they
# would leave no trace at all. soak/check.py matches it to its dropped requests.
REQUESTS_ABANDONED = Counter(
    "llmsite_requests_abandoned",
    "Requests the client abandoned before a service took them (so with no usage record).",
    registry=REGISTRY,
)

UNMATCHED_ROUTE = "(unmatched)"


def http_observe(*, route: str, status: int, model: str, seconds: float) -> None:
    route = route or UNMATCHED_ROUTE
    HTTP_REQUESTS.labels(route=route, status=str(status), model=model).inc()
    HTTP_DURATION.labels(route=route).observe(seconds)


def render() -> tuple[bytes, str]:
    """The text exposition of every metric registered here, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def uptime_seconds() -> float:
    return time.monotonic() - _STARTED_MONOTONIC


def counter_total(counter: Counter, **where: str) -> int:
    """A counter's total over the label values that match `where`."""
    total = 0.0
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in where.items()
            ):
                total += sample.value
    return int(total)


def http_totals() -> dict[str, int]:
    """HTTP responses since this process started, and how many were 5xx."""
    http_errors = 0
    for family in HTTP_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["status"].startswith("5"):
                http_errors += int(sample.value)
    return {"http_requests": counter_total(HTTP_REQUESTS), "http_errors": http_errors}
