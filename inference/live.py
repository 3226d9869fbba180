"""Live, measured figures per model, for the router and the operators' views.

Time to first token and decode speed are exponential moving averages of what
requests actually saw, in this process. In-flight counts requests that hold a
backend right now (local engines also report their own queue). Nothing here
touches the database or does I/O: the router reads it on the event loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

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
