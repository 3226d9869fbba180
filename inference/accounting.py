"""One request's accounting: quota reservation before inference, settlement and
exactly one usage record after it, however the request ends.

Private to the request service (`inference.services`): nothing else builds it,
sets its fields or writes it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.db import transaction

from accounts.authentication import Principal
from billing.quota import (
    Prices,
    Reservation,
    prices_for,
    prices_of,
    quota_in_database,
    quota_reserve_async,
    quota_settle,
    quota_settle_async,
)
from billing.services import budget_check, usage_record
from inference import telemetry as metrics
from llmsite.db import pooled
from llmsite.errors import to_api_error


@dataclass
class Accounting:
    principal: Principal
    endpoint: str
    request_id: str
    model_id: str = ""
    end_user: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    status: str = "ok"
    error_code: str = ""
    reservation: Reservation | None = None
    model_pk: int | None = None
    # Set when a stream took over: its `finally` writes the record, not the view.
    deferred: bool = False
    written: bool = False
    # Response headers the service decided (the router's x-llmsite-model/-route).
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds spent reserving quota, and waiting on the backend that answered
    # (to its first event when streamed, to the whole answer otherwise): the
    # Server-Timing header's stages (server_timing).
    quota_s: float = 0.0
    backend_s: float | None = None

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.status = "cancelled"
            return
        err = to_api_error(exc) if isinstance(exc, Exception) else None
        self.status = "rejected" if err is not None and err.status == 429 else "error"
        # An error relayed from upstream is recorded under its own code, not the upstream's.
        code = (getattr(err, "record_code", None) or err.code) if err else None
        self.error_code = code or "internal_error"

    async def reserve(self, *, model, max_completion_tokens: int, count_request: bool = True):
        self.model_pk = model.pk if model is not None else None
        self.reservation = await quota_reserve_async(
            tenant=self.principal.tenant,
            api_key=self.principal.api_key,
            request_id=self.request_id,
            prompt_tokens=self.prompt_tokens,
            max_completion_tokens=max_completion_tokens,
            count_request=count_request,
            prices=prices_of(model) if model is not None else Prices(),
        )

    def server_timing(self) -> str | None:
        """The service's Server-Timing stages (W3C Server Timing; milliseconds), once a
        backend answered: the middleware adds `total`, and what is left of it is the
        gateway's own time (parsing, authentication, routing, prompt building)."""
        if self.backend_s is None:
            return None
        return f"quota;dur={self.quota_s * 1000:.2f}, backend;dur={self.backend_s * 1000:.2f}"

    def rate_headers(self) -> dict[str, str]:
        return self.reservation.headers() if self.reservation else {}

    async def write(self) -> None:
        if self.written:
            return
        self.written = True
        ttft = int((self.first_token_at - self.started) * 1000) if self.first_token_at else None
        latency = int((time.monotonic() - self.started) * 1000)
        if self.reservation is None:
            # Refused before inference (validation, quota, context length): nothing
            # was computed for it, so nothing is billed.
            self.prompt_tokens = self.completion_tokens = 0
        metrics.usage_observe(self, latency_ms=latency, ttft_ms=ttft)
        # Shielded: a client that disconnects cancels us, but its usage still lands.
        await asyncio.shield(self._finish_async(latency, ttft))

    async def _finish_async(self, latency_ms: int, ttft_ms: int | None) -> None:
        reservation = self.reservation
        if reservation is None or reservation.empty or quota_in_database():
            await sync_to_async(pooled(self._finish))(latency_ms, ttft_ms)
            return
        # Redis settles on the loop while the record commits in a thread: two
        # round trips to two servers at once. Settling never raises.
        settled = quota_settle_async(
            reservation=reservation,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )
        await asyncio.gather(
            settled, sync_to_async(pooled(self._finish))(latency_ms, ttft_ms, False)
        )

    def _finish(self, latency_ms: int, ttft_ms: int | None, settle: bool = True) -> None:
        reservation = self.reservation
        if reservation is None or reservation.empty or not quota_in_database():
            # Redis settles in one round trip, the record and its roll-up take one more.
            if reservation is not None and settle:
                self._settle()
            self._write_record(latency_ms, ttft_ms)
        else:
            # Database quotas: the settlement commits with the record, one commit for both.
            try:
                with transaction.atomic():
                    self._settle()
                    self._write_record(latency_ms, ttft_ms)
            except Exception:
                # The settlement rolled back with the record: free the slot all the same.
                reservation.settled = False
                self._settle()
                raise
        # The counters already hold the month's spend: look closer only near the line.
        if reservation is not None and reservation.budget_near():
            budget_check(tenant=self.principal.tenant)

    def _settle(self) -> None:
        quota_settle(
            reservation=self.reservation,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )

    def _write_record(self, latency_ms: int, ttft_ms: int | None) -> None:
        prices = self.reservation.prices if self.reservation else prices_for(self.model_pk)
        usage_record(
            tenant=self.principal.tenant,
            api_key=self.principal.api_key,
            user=self.principal.user,
            endpoint=self.endpoint,
            model_id=self.model_id,
            end_user=self.end_user,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=prices.cost(self.prompt_tokens, self.completion_tokens),
            status=self.status,
            error_code=self.error_code,
            request_id=self.request_id,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
        )
