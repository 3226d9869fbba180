"""What this process measures about inference: live figures, Prometheus metrics
and the operators' stats snapshot.

Live figures (`live`) are exponential moving averages of what requests actually
saw in this process (time to first token, decode speed) plus in-flight counts;
the router reads them on the event loop, so they do no I/O.

Prometheus metrics are registered on llmsite.prometheus.REGISTRY, beside the
HTTP-level ones the middleware feeds. Counters and histograms are fed by the
accounting of /v1 calls (one observation per usage record: tokens, latency,
TTFT, status, quota refusals). Gauges (queue depth, in-flight, loaded models,
measured TTFT and decode speed, engine stats) are read at scrape time from the
registry and `live`, so they cost nothing between scrapes.

Model labels only ever name real models (a resolved row, or the router's
`x-llmsite-model` header), never what a client typed, so label cardinality
stays bounded by the registry.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference.model_admin import ModelState, model_file_size, model_state
from inference.models import LLMModel
from inference.registry import registry
from llmsite.prometheus import (
    LATENCY_BUCKETS,
    REGISTRY,
    STARTED_AT,
    counter_total,
    http_totals,
    uptime_seconds,
)

logger = logging.getLogger("llmsite.telemetry")

# -- live figures, for the router and the operators' views ------------------------
# Weight of the newest observation: ~10 requests dominate the average.
ALPHA = 0.2


@dataclass
class Figures:
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    last_used: float = 0.0  # time.monotonic()

    def snapshot(self) -> Figures:
        return Figures(**self.__dict__)


class LiveFigures:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, Figures] = {}

    def _get(self, model_id: str) -> Figures:
        figures = self._by_model.get(model_id)
        if figures is None:
            figures = self._by_model[model_id] = Figures()
        return figures

    def get(self, model_id: str) -> Figures:
        with self._lock:
            return self._get(model_id).snapshot()

    def all(self) -> dict[str, Figures]:
        with self._lock:
            return {mid: f.snapshot() for mid, f in self._by_model.items()}

    def started(self, model_id: str) -> None:
        with self._lock:
            figures = self._get(model_id)
            figures.in_flight += 1
            figures.last_used = time.monotonic()

    def finished(
        self,
        model_id: str,
        *,
        ok: bool,
        ttft_s: float | None = None,
        completion_tokens: int = 0,
        decode_s: float | None = None,
    ) -> None:
        """Close one request started with `started`; fold its timings into the averages."""
        with self._lock:
            figures = self._get(model_id)
            figures.in_flight = max(0, figures.in_flight - 1)
            figures.requests += 1
            figures.last_used = time.monotonic()
            if not ok:
                figures.errors += 1
                return
            if ttft_s is not None:
                figures.ttft_ms = _ewma(figures.ttft_ms, ttft_s * 1000)
            # A single token says nothing about decode speed.
            if decode_s and decode_s > 0 and completion_tokens > 1:
                figures.tokens_per_s = _ewma(
                    figures.tokens_per_s, (completion_tokens - 1) / decode_s
                )

    def set(self, model_id: str, **values) -> None:
        """Set figures directly (operators seeding a model; tests with controlled figures)."""
        with self._lock:
            figures = self._get(model_id)
            for name, value in values.items():
                setattr(figures, name, value)

    def reset(self) -> None:
        with self._lock:
            self._by_model.clear()


def _ewma(previous: float | None, value: float) -> float:
    return value if previous is None else previous + ALPHA * (value - previous)


live = LiveFigures()


# -- Prometheus metrics ---------------------------------------------------------
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

INFERENCE_REQUESTS = Counter(
    "llmsite_inference_requests",
    "/v1 calls (one per usage record), by endpoint, model and outcome "
    "(ok, error, cancelled, rejected).",
    ["endpoint", "model", "status"],
    registry=REGISTRY,
)
INFERENCE_DURATION = Histogram(
    "llmsite_inference_duration_seconds",
    "Whole /v1 call, streams to their last byte, by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TTFT = Histogram(
    "llmsite_time_to_first_token_seconds",
    "Time from the request to its first generated token, by model.",
    ["model"],
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "llmsite_prompt_tokens",
    "Prompt tokens billed, by model.",
    ["model"],
    registry=REGISTRY,
)
COMPLETION_TOKENS = Counter(
    "llmsite_completion_tokens",
    "Completion tokens generated and billed, by model.",
    ["model"],
    registry=REGISTRY,
)
QUOTA_REFUSALS = Counter(
    "llmsite_quota_refusals",
    "Requests refused by a rate limit or quota (429), by code.",
    ["code"],
    registry=REGISTRY,
)


# -- observing --------------------------------------------------------------------
def usage_observe(acct: Any, *, latency_ms: int, ttft_ms: int | None) -> None:
    """Fold one finished /v1 call (an `inference.accounting.Accounting`) into the metrics.

    Never raises: metrics must not cost anyone their usage record.
    """
    try:
        # model_pk is set once the model row was resolved; before that model_id
        # is whatever the client sent, which must not become a label.
        model = acct.model_id if acct.model_pk is not None else ""
        INFERENCE_REQUESTS.labels(endpoint=acct.endpoint, model=model, status=acct.status).inc()
        if acct.status == "rejected":
            QUOTA_REFUSALS.labels(code=acct.error_code or "rate_limit_exceeded").inc()
        if not model:
            return
        INFERENCE_DURATION.labels(model=model).observe(latency_ms / 1000)
        if ttft_ms is not None:
            TTFT.labels(model=model).observe(ttft_ms / 1000)
        if acct.prompt_tokens:
            PROMPT_TOKENS.labels(model=model).inc(acct.prompt_tokens)
        if acct.completion_tokens:
            COMPLETION_TOKENS.labels(model=model).inc(acct.completion_tokens)
    except Exception:
        logger.exception("could not record metrics for request %s", acct.request_id)


# -- scrape-time gauges -----------------------------------------------------------
_STAT_KEY = re.compile(r"[^a-zA-Z0-9_]")


def engine_stats(engine: Any) -> dict[str, float]:
    """The numeric entries of an engine's optional `stats()` (prefix-cache hits and so on)."""
    stats = getattr(engine, "stats", None)
    if not callable(stats):
        return {}
    try:
        raw = stats()
    except Exception:
        logger.exception("stats() of engine %s failed", getattr(engine, "spec", engine))
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        # bool is an int: exported as 0/1.
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
            out[_STAT_KEY.sub("_", str(key))] = float(value)
    return out


def _worker_metrics() -> Iterator[Metric]:
    """Model worker processes (under `manage.py serve`): up, crashes and restarts.

    The supervisor's figures, so every gateway process reports the same ones.
    """
    workers = getattr(registry, "workers", None)
    if workers is None:
        return
    views = workers()
    up = GaugeMetricFamily(
        "llmsite_model_worker_up",
        "1 when the model's worker process is serving.",
        labels=["model"],
    )
    crashes = CounterMetricFamily(
        "llmsite_model_worker_crashes",
        "Model worker processes that died or hung (and were killed).",
        labels=["model"],
    )
    restarts = CounterMetricFamily(
        "llmsite_model_worker_restarts",
        "Model worker processes started again after a crash.",
        labels=["model"],
    )
    for mid, view in sorted(views.items()):
        up.add_metric([mid], 1.0 if view["state"] == "loaded" else 0.0)
        crashes.add_metric([mid], view["crashes"])
        restarts.add_metric([mid], view["restarts"])
    yield up
    yield crashes
    yield restarts


class _LiveCollector(Collector):
    """Reads the registry and the live figures on each scrape."""

    _FIXED = ("queue_depth", "in_flight")

    def collect(self) -> Iterator[Metric]:
        loaded = {
            mid: engine
            for mid in registry.loaded_ids()
            if (engine := registry.get_loaded(mid)) is not None
        }

        count = GaugeMetricFamily("llmsite_models_loaded", "Local models loaded in this process.")
        count.add_metric([], len(loaded))
        yield count

        queue = GaugeMetricFamily(
            "llmsite_engine_queue_depth",
            "Jobs waiting on a local model's engine.",
            labels=["model"],
        )
        busy = GaugeMetricFamily(
            "llmsite_engine_in_flight",
            "Jobs a local model's engine is running now.",
            labels=["model"],
        )
        extra: dict[str, GaugeMetricFamily] = {}
        for mid, engine in sorted(loaded.items()):
            queue.add_metric([mid], engine.queue_depth)
            busy.add_metric([mid], engine.in_flight)
            for key, value in engine_stats(engine).items():
                if key in self._FIXED:
                    continue  # already exported above, under the same name
                family = extra.get(key)
                if family is None:
                    family = extra[key] = GaugeMetricFamily(
                        f"llmsite_engine_{key}",
                        f"Engine stat `{key}`, as the engine reports it.",
                        labels=["model"],
                    )
                family.add_metric([mid], value)
        yield queue
        yield busy
        yield from extra.values()
        yield from _worker_metrics()

        figures = live.all()
        in_flight = GaugeMetricFamily(
            "llmsite_model_in_flight",
            "Requests holding a model's backend now, local or remote (router's count).",
            labels=["model"],
        )
        ttft = GaugeMetricFamily(
            "llmsite_model_ttft_seconds_avg",
            "Measured time to first token, moving average (what the router decides on).",
            labels=["model"],
        )
        speed = GaugeMetricFamily(
            "llmsite_model_tokens_per_second_avg",
            "Measured decode speed, moving average (what the router decides on).",
            labels=["model"],
        )
        for mid, fig in sorted(figures.items()):
            in_flight.add_metric([mid], fig.in_flight)
            if fig.ttft_ms is not None:
                ttft.add_metric([mid], fig.ttft_ms / 1000)
            if fig.tokens_per_s is not None:
                speed.add_metric([mid], fig.tokens_per_s)
        yield in_flight
        yield ttft
        yield speed

        start = GaugeMetricFamily(
            "llmsite_start_time_seconds", "When this process started, in Unix time."
        )
        start.add_metric([], STARTED_AT)
        yield start


REGISTRY.register(_LiveCollector())


# -- process totals, for the operators' stats -------------------------------------
def request_totals() -> dict[str, int]:
    """This process's counts since it started."""
    return {
        "requests": counter_total(INFERENCE_REQUESTS),
        "errors": counter_total(INFERENCE_REQUESTS, status="error"),
        "rejected": counter_total(INFERENCE_REQUESTS, status="rejected"),
        "cancelled": counter_total(INFERENCE_REQUESTS, status="cancelled"),
        **http_totals(),
    }


# -- the operators' snapshot ------------------------------------------------------
def model_status(*, model: LLMModel) -> dict:
    """One model as an operator sees it in this process: state, load, speed, memory."""
    # Remote backends hold nothing here: no engine, no queue, no memory.
    state = ModelState("remote") if model.is_remote else model_state(model=model)
    loaded = state.state == "loaded"
    figures = live.get(model.model_id)
    return {
        "id": model.model_id,
        "backend": model.backend,
        "state": state.state,
        "error": state.error,
        "loaded": loaded,
        "queue_depth": state.queue_depth,
        "engine_in_flight": state.in_flight,
        "in_flight": figures.in_flight,
        "requests": figures.requests,
        "errors": figures.errors,
        "ttft_ms": None if figures.ttft_ms is None else round(figures.ttft_ms, 1),
        "tokens_per_s": None if figures.tokens_per_s is None else round(figures.tokens_per_s, 1),
        "memory_bytes": model_file_size(model=model) if loaded else None,
        "engine_stats": engine_stats(registry.get(model.model_id)) if loaded else {},
    }


def operator_stats() -> dict:
    """Uptime, request totals and every enabled model, for GET /api/admin/stats."""
    models = [model_status(model=m) for m in LLMModel.objects.enabled()]
    return {
        "object": "llmsite.stats",
        "started_at": STARTED_AT,
        "uptime_s": round(uptime_seconds(), 1),
        **request_totals(),
        "models_loaded": len(registry.loaded_ids()),
        "models": models,
    }
