"""Quotas and rate limits, exact across processes.

A request reserves, before inference, one unit of its scopes' request
counters, its estimated tokens (prompt + max_tokens) and estimated cost, and a
concurrency slot; after inference it settles to the real figures and gives
the slot back. Scopes are the tenant (plan + overrides) and the key (its own,
tighter, limits).

All checks of one reservation are decided together and applied together, or
not at all:
- with REDIS_URL, by one Lua script (one round trip);
- without, inside one database transaction holding row locks on the counters
  (SQLite takes its write lock at BEGIN IMMEDIATE, which serialises as well).

Windows are fixed and in UTC: the minute, the day, the month.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import os
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from billing.models import (
    ConcurrencyLease,
    KeyLimits,
    Limits,
    ModelPrice,
    QuotaCounter,
    TenantBilling,
)
from llmsite.db import pooled
from llmsite.errors import RateLimited, ServiceUnavailable

logger = logging.getLogger("llmsite.quota")

NANOS = Decimal(1_000_000_000)
MILLION = Decimal(1_000_000)
LEASE_SECONDS = 15 * 60  # a crashed process's concurrency slot frees itself after this


class QuotaExceeded(RateLimited):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


@dataclass(frozen=True)
class EffectiveLimits:
    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    max_concurrent: int | None = None
    monthly_budget: Decimal | None = None
    soft_budget_percent: int = 80

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in Limits.LIMIT_FIELDS)


def _pick(*rows: Limits | None, name: str):
    for row in rows:
        if row is not None and getattr(row, name) is not None:
            return getattr(row, name)
    return None


def tenant_limits(tenant: Tenant) -> EffectiveLimits:
    try:
        billing = tenant.billing  # joined by authentication; one query otherwise
    except TenantBilling.DoesNotExist:
        billing = None
    plan = billing.plan if billing else None
    return EffectiveLimits(
        **{f: _pick(billing, plan, name=f) for f in Limits.LIMIT_FIELDS},
        soft_budget_percent=plan.soft_budget_percent if plan else 80,
    )


def key_limits(api_key: ApiKey | None) -> EffectiveLimits:
    if api_key is None:
        return EffectiveLimits()
    try:
        row = api_key.limits  # joined by authentication; one query otherwise
    except KeyLimits.DoesNotExist:
        row = None
    return EffectiveLimits(**{f: _pick(row, name=f) for f in Limits.LIMIT_FIELDS})


@dataclass(frozen=True)
class Prices:
    prompt_per_million: Decimal = Decimal(0)
    completion_per_million: Decimal = Decimal(0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        raw = (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        ) / MILLION
        return raw.quantize(Decimal("0.00000001"), rounding=ROUND_HALF_UP)


def prices_of(model) -> Prices:
    """Prices from a model row fetched with select_related("price") (no query)."""
    from django.core.exceptions import ObjectDoesNotExist

    try:
        row = model.price
    except ObjectDoesNotExist:
        return Prices()
    return Prices(row.prompt_per_million, row.completion_per_million)


def prices_for(model_pk: int | None) -> Prices:
    row = ModelPrice.objects.filter(model_id=model_pk).first() if model_pk else None
    if row is None:
        return Prices()
    return Prices(row.prompt_per_million, row.completion_per_million)


# -- windows -------------------------------------------------------------------------
def _windows(now: datetime) -> dict[str, tuple[str, int]]:
    """Window id and seconds until it resets, per kind."""
    minute = now.replace(second=0, microsecond=0)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days_in_month = calendar.monthrange(now.year, now.month)[1]
    month_end = day.replace(day=1) + timedelta(days=days_in_month)
    return {
        "minute": (minute.strftime("%Y%m%d%H%M"), _until(now, minute + timedelta(minutes=1))),
        "day": (day.strftime("%Y%m%d"), _until(now, day + timedelta(days=1))),
        "month": (now.strftime("%Y%m"), _until(now, month_end)),
    }


def _until(now: datetime, end: datetime) -> int:
    return max(1, math.ceil((end - now).total_seconds()))


def reset_text(seconds: int) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `2h3m0s`."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# -- the plan of one reservation -------------------------------------------------------
@dataclass
class Check:
    key: str
    increment: int
    limit: int
    ttl: int  # seconds the counter lives (past its window)
    reset: int  # seconds until the window resets
    kind: str  # requests | tokens | tokens_per_day | tokens_per_month | budget
    scope: str


@dataclass
class Reservation:
    request_id: str
    checks: list[Check]
    slots: list[tuple[str, int]]  # (zset/lease scope, limit)
    estimated_tokens: int
    estimated_cost_nanos: int
    prices: Prices
    values: dict[str, int] = field(default_factory=dict)  # counter key -> value after reserve
    settled: bool = False

    soft_budget_percent: int = 80
    # Concurrency slots are held under this id, never the client's X-Request-Id:
    # requests sharing one id would otherwise share (or collide on) one lease.
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def empty(self) -> bool:
        """No limit applied: nothing was reserved, nothing to settle."""
        return not self.checks and not self.slots

    def budget_near(self) -> bool:
        """Whether this month's spend (as counted at reservation) reached the soft share."""
        return any(
            c.kind == "budget"
            and c.scope.startswith("t")
            and self.values.get(c.key, 0) * 100 >= c.limit * self.soft_budget_percent
            for c in self.checks
        )

    def headers(self) -> dict[str, str]:
        """x-ratelimit-* for the tightest request and token-per-minute limits."""
        out: dict[str, str] = {}
        for kind, name in (("requests", "requests"), ("tokens", "tokens")):
            checks = [c for c in self.checks if c.kind == kind]
            if not checks:
                continue
            tight = min(checks, key=lambda c: c.limit - self.values.get(c.key, 0))
            remaining = max(0, tight.limit - self.values.get(tight.key, 0))
            out[f"x-ratelimit-limit-{name}"] = str(tight.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(remaining)
            out[f"x-ratelimit-reset-{name}"] = reset_text(tight.reset)
        return out


_KIND_ERROR = {
    "requests": ("rate_limit_exceeded", "requests per minute"),
    "tokens": ("rate_limit_exceeded", "tokens per minute"),
    "tokens_per_day": ("insufficient_quota", "tokens per day"),
    "tokens_per_month": ("insufficient_quota", "tokens per month"),
    "budget": ("insufficient_quota", "monthly budget"),
}


def _plan(
    *,
    tenant: Tenant,
    limits_of_tenant: EffectiveLimits,
    api_key: ApiKey | None,
    request_id: str,
    tokens: int,
    cost_nanos: int,
    count_request: bool,
    now: datetime,
) -> tuple[list[Check], list[tuple[str, int]]]:
    windows = _windows(now)
    prefix = settings.LLMSITE_QUOTA_PREFIX
    checks: list[Check] = []
    slots: list[tuple[str, int]] = []
    scopes = [(f"t{tenant.pk}", limits_of_tenant)]
    if api_key is not None:
        scopes.append((f"k{api_key.pk}", key_limits(api_key)))
    for scope, limits in scopes:

        def add(kind: str, window: str, limit, increment: int, ttl: int, scope=scope) -> None:
            if limit is None or (increment == 0 and kind != "requests"):
                return
            window_id, reset = windows[window]
            checks.append(
                Check(
                    f"{prefix}:{scope}:{kind}:{window_id}",
                    increment,
                    int(limit),
                    ttl,
                    reset,
                    kind,
                    scope,
                )
            )

        if count_request:
            add("requests", "minute", limits.rpm, 1, 120)
        add("tokens", "minute", limits.tpm, tokens, 120)
        add("tokens_per_day", "day", limits.tokens_per_day, tokens, 2 * 86400)
        add("tokens_per_month", "month", limits.tokens_per_month, tokens, 32 * 86400)
        if limits.monthly_budget is not None:
            add("budget", "month", int(limits.monthly_budget * NANOS), cost_nanos, 32 * 86400)
        if limits.max_concurrent is not None and count_request:
            slots.append((f"{prefix}:{scope}:concurrent", limits.max_concurrent))
    return checks, slots


def _refusal(check: Check | None, slot_limit: int | None, current: int) -> RateLimited:
    if check is None:
        return RateLimited(
            f"Too many concurrent requests: the limit is {slot_limit}. Retry when one finishes.",
            headers={"Retry-After": "1"},
        )
    code, what = _KIND_ERROR[check.kind]
    who = "this API key" if check.scope.startswith("k") else "your organization"
    if check.kind == "budget":
        message = "You exceeded your monthly budget; raise it or wait for next month."
    else:
        message = (
            f"Limit reached for {who}: {what} {check.limit}, used {current}, "
            f"requested {check.increment}."
        )
    cls = QuotaExceeded if code == "insufficient_quota" else RateLimited
    headers = {"Retry-After": str(check.reset)}
    if check.kind in ("requests", "tokens"):
        # The same x-ratelimit-* a successful response carries, for the limit hit.
        headers.update(
            {
                f"x-ratelimit-limit-{check.kind}": str(check.limit),
                f"x-ratelimit-remaining-{check.kind}": str(max(0, check.limit - current)),
                f"x-ratelimit-reset-{check.kind}": reset_text(check.reset),
            }
        )
    return cls(message, headers=headers)


# -- backends ------------------------------------------------------------------------------
_RESERVE_LUA = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local incr = tonumber(ARGV[base + 1])
  local limit = tonumber(ARGV[base + 2])
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if cur + incr > limit then return {i, cur} end
end
local zbase = 2 + n * 3
local nz = #KEYS - n
for j = 1, nz do
  local key = KEYS[n + j]
  local limit = tonumber(ARGV[zbase + (j - 1) * 3 + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local cur = redis.call('ZCARD', key)
  if cur >= limit then return {n + j, cur} end
end
local out = {0}
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local v = redis.call('INCRBY', KEYS[i], tonumber(ARGV[base + 1]))
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[base + 3]))
  out[#out + 1] = v
end
for j = 1, nz do
  local key = KEYS[n + j]
  local member = ARGV[zbase + (j - 1) * 3 + 2]
  local expiry = tonumber(ARGV[zbase + (j - 1) * 3 + 3])
  redis.call('ZADD', key, expiry, member)
  redis.call('PEXPIRE', key, expiry - now + 60000)
end
return out
"""


class RedisBackend:
    def __init__(self, url: str) -> None:
        import redis

        self._url = url
        self._client = redis.Redis.from_url(url)
        self._script = self._client.register_script(_RESERVE_LUA)
        # redis.asyncio clients belong to the loop that made them: one per loop.
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @staticmethod
    def _script_input(reservation: Reservation) -> tuple[list[str], list]:
        now_ms = int(time.time() * 1000)
        keys = [c.key for c in reservation.checks] + [s for s, _ in reservation.slots]
        args: list = [now_ms, len(reservation.checks)]
        for c in reservation.checks:
            args += [c.increment, c.limit, c.ttl]
        for _, limit in reservation.slots:
            args += [limit, reservation.lease_id, now_ms + LEASE_SECONDS * 1000]
        return keys, args

    @staticmethod
    def _unavailable(exc: Exception) -> ServiceUnavailable:
        # Fail closed: without the counters nothing can be admitted safely. The
        # client gets a clean 503; the next request after Redis returns works.
        logger.error("quota store unavailable: %s", type(exc).__name__)
        return ServiceUnavailable(
            "The quota store is unavailable; retry shortly.", headers={"Retry-After": "1"}
        )

    @staticmethod
    def _apply(reservation: Reservation, result) -> None:
        failed, *rest = (int(x) for x in result)
        if failed:
            n = len(reservation.checks)
            if failed <= n:
                raise _refusal(reservation.checks[failed - 1], None, rest[0])
            raise _refusal(None, reservation.slots[failed - n - 1][1], rest[0])
        reservation.values = {c.key: v for c, v in zip(reservation.checks, rest)}

    def reserve(self, reservation: Reservation) -> None:
        import redis

        keys, args = self._script_input(reservation)
        try:
            result = self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        self._apply(reservation, result)

    def _async_script(self):
        """The reservation script on this event loop's redis.asyncio client."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        script = self._async.get(loop)
        if script is None:
            client = redis.asyncio.Redis.from_url(self._url)
            script = self._async[loop] = client.register_script(_RESERVE_LUA)
        return script

    async def reserve_async(self, reservation: Reservation) -> None:
        """reserve, on the event loop: the same script over redis.asyncio."""
        import redis

        keys, args = self._script_input(reservation)
        try:
            result = await self._async_script()(keys=keys, args=args)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        self._apply(reservation, result)

    def settle(self, reservation: Reservation, deltas: dict[str, int]) -> None:
        pipe = self._client.pipeline(transaction=False)
        self._settle_commands(pipe, reservation, deltas)
        pipe.execute()

    async def settle_async(self, reservation: Reservation, deltas: dict[str, int]) -> None:
        pipe = self._async_script().registered_client.pipeline(transaction=False)
        self._settle_commands(pipe, reservation, deltas)
        await pipe.execute()

    @staticmethod
    def _settle_commands(pipe, reservation: Reservation, deltas: dict[str, int]) -> None:
        for key, delta in deltas.items():
            if delta:
                pipe.incrby(key, delta)
        for scope, _ in reservation.slots:
            pipe.zrem(scope, reservation.lease_id)


class DatabaseBackend:
    """A handful of statements per reservation, whatever the number of limits."""

    def reserve(self, reservation: Reservation) -> None:
        now = timezone.now()
        checks = reservation.checks
        slots = dict(reservation.slots)
        ttl = {c.key: c.ttl for c in checks}
        keys = sorted(set(ttl) | set(slots))
        with transaction.atomic():
            # A new window's counters start at 0; a concurrent reservation may insert
            # them first. Inserted in key order, like the locks below.
            QuotaCounter.objects.bulk_create(
                [
                    QuotaCounter(
                        key=key,
                        value=0,
                        expires_at=now + timedelta(seconds=ttl.get(key, LEASE_SECONDS)),
                    )
                    for key in keys
                ],
                ignore_conflicts=True,
            )
            # Locked in key order: two reservations over the same scopes cannot deadlock.
            # Window ids are part of the keys, so a counter never needs resetting.
            # A slot's scope has a counter row too: its lock serialises the lease count.
            current = dict(
                QuotaCounter.objects.select_for_update()
                .filter(key__in=keys)
                .order_by("key")
                .values_list("key", "value")
            )
            for check in checks:
                if current[check.key] + check.increment > check.limit:
                    raise _refusal(check, None, current[check.key])
            if slots:
                leases = ConcurrencyLease.objects.filter(scope__in=slots)
                leases.filter(expires_at__lte=now).delete()
                held = dict(leases.values_list("scope").annotate(n=Count("id")).order_by())
                for scope, limit in reservation.slots:
                    if held.get(scope, 0) >= limit:
                        raise _refusal(None, limit, held.get(scope, 0))
            for check in checks:
                current[check.key] += check.increment
            QuotaCounter.objects.bulk_update(
                [QuotaCounter(key=c.key, value=current[c.key]) for c in checks], ["value"]
            )
            ConcurrencyLease.objects.bulk_create(
                ConcurrencyLease(
                    scope=scope,
                    request_id=reservation.lease_id,
                    expires_at=now + timedelta(seconds=LEASE_SECONDS),
                )
                for scope in slots
            )
        reservation.values = {c.key: current[c.key] for c in checks}

    def settle(self, reservation: Reservation, deltas: dict[str, int]) -> None:
        with transaction.atomic():
            QuotaCounter.objects.bulk_update(
                [QuotaCounter(key=k, value=F("value") + d) for k, d in deltas.items() if d],
                ["value"],
            )
            if reservation.slots:
                ConcurrencyLease.objects.filter(
                    scope__in=[scope for scope, _ in reservation.slots],
                    request_id=reservation.lease_id,
                ).delete()


# (url, pid, backend): a forked worker needs its own Redis connections.
_backend: tuple[str, int, RedisBackend | DatabaseBackend] | None = None


def backend() -> RedisBackend | DatabaseBackend:
    global _backend
    choice = settings.LLMSITE_QUOTA_BACKEND
    url = settings.REDIS_URL if choice != "db" else ""
    pid = os.getpid()
    if _backend is None or _backend[:2] != (url, pid):
        _backend = (url, pid, RedisBackend(url) if url else DatabaseBackend())
    return _backend[2]


def quota_in_database() -> bool:
    """Whether reservations live in the database (no Redis), where settling can
    share the usage record's transaction."""
    return isinstance(backend(), DatabaseBackend)


# -- the API used by the request path ----------------------------------------------------
def quota_reserve(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    request_id: str,
    prompt_tokens: int,
    max_completion_tokens: int,
    model_pk: int | None,
    count_request: bool = True,
    prices: Prices | None = None,
) -> Reservation:
    """Reserve before inference; raises RateLimited / QuotaExceeded (429) when refused."""
    prices = prices if prices is not None else prices_for(model_pk)
    reservation = _priced_reservation(
        tenant, api_key, request_id, prompt_tokens, max_completion_tokens, count_request, prices
    )
    if not reservation.empty:
        backend().reserve(reservation)
    return reservation


def _priced_reservation(
    tenant: Tenant,
    api_key: ApiKey | None,
    request_id: str,
    prompt_tokens: int,
    max_completion_tokens: int,
    count_request: bool,
    prices: Prices,
) -> Reservation:
    """The reservation for a request of this size at these prices (nothing reserved yet)."""
    return _reservation(
        tenant=tenant,
        api_key=api_key,
        request_id=request_id,
        tokens=prompt_tokens + max_completion_tokens,
        cost=prices.cost(prompt_tokens, max_completion_tokens),
        count_request=count_request,
        prices=prices,
    )


async def quota_reserve_async(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    request_id: str,
    prompt_tokens: int,
    max_completion_tokens: int,
    prices: Prices,
    count_request: bool = True,
) -> Reservation:
    """quota_reserve for the event loop. On Redis, with the limits rows loaded
    along with the authenticated key (the usual case), it reserves without a
    thread hop; otherwise the database does it, in a thread."""
    store = backend()
    if not isinstance(store, RedisBackend) or not _limits_loaded(tenant, api_key):
        return await sync_to_async(pooled(quota_reserve))(
            tenant=tenant,
            api_key=api_key,
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            max_completion_tokens=max_completion_tokens,
            model_pk=None,
            count_request=count_request,
            prices=prices,
        )
    reservation = _priced_reservation(
        tenant, api_key, request_id, prompt_tokens, max_completion_tokens, count_request, prices
    )
    if not reservation.empty:
        await store.reserve_async(reservation)
    return reservation


def _limits_loaded(tenant: Tenant, api_key: ApiKey | None) -> bool:
    """Whether the tenant's billing, plan and the key's limits are already on the
    instances (select_related by authentication), so reading them costs no query."""
    if not Tenant.billing.is_cached(tenant):
        return False
    try:
        billing = tenant.billing
    except TenantBilling.DoesNotExist:
        billing = None
    if billing is None or billing.plan_id is None:
        plan_loaded = True
    else:
        plan_loaded = TenantBilling.plan.is_cached(billing)
    if not plan_loaded:
        return False
    return api_key is None or ApiKey.limits.is_cached(api_key)


def _reservation(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    request_id: str,
    tokens: int,
    cost: Decimal,
    count_request: bool,
    prices: Prices,
) -> Reservation:
    limits = tenant_limits(tenant)
    checks, slots = _plan(
        tenant=tenant,
        limits_of_tenant=limits,
        api_key=api_key,
        request_id=request_id,
        tokens=tokens,
        cost_nanos=int(cost * NANOS),
        count_request=count_request,
        now=datetime.now(UTC),
    )
    return Reservation(
        request_id=request_id,
        checks=checks,
        slots=slots,
        estimated_tokens=tokens,
        estimated_cost_nanos=int(cost * NANOS),
        prices=prices,
        soft_budget_percent=limits.soft_budget_percent,
    )


def quota_settle(*, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
    """Give back what was reserved and not used, and the concurrency slot. Idempotent."""
    deltas = _settlement(reservation, prompt_tokens, completion_tokens)
    if deltas is None:
        return
    try:
        backend().settle(reservation, deltas)
    except Exception:
        # Never lose the usage record over this; the lease expires on its own.
        logger.exception("settling quota for %s failed", reservation.request_id)


async def quota_settle_async(
    *, reservation: Reservation, prompt_tokens: int, completion_tokens: int
) -> None:
    """quota_settle for the event loop: on Redis without a thread hop."""
    store = backend()
    if not isinstance(store, RedisBackend):
        settle = sync_to_async(pooled(quota_settle))
        await settle(
            reservation=reservation,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        return
    deltas = _settlement(reservation, prompt_tokens, completion_tokens)
    if deltas is None:
        return
    try:
        await store.settle_async(reservation, deltas)
    except Exception:
        logger.exception("settling quota for %s failed", reservation.request_id)


def _settlement(
    reservation: Reservation, prompt_tokens: int, completion_tokens: int
) -> dict[str, int] | None:
    """The counter corrections that settle a reservation; None when there is
    nothing (left) to settle. Marks it settled: settling happens once."""
    if reservation.settled:
        return None
    reservation.settled = True
    if reservation.empty:
        return None
    actual_tokens = prompt_tokens + completion_tokens
    actual_cost = int(reservation.prices.cost(prompt_tokens, completion_tokens) * NANOS)
    deltas: dict[str, int] = {}
    for check in reservation.checks:
        if check.kind in ("tokens", "tokens_per_day", "tokens_per_month"):
            deltas[check.key] = actual_tokens - reservation.estimated_tokens
        elif check.kind == "budget":
            deltas[check.key] = actual_cost - reservation.estimated_cost_nanos
    return deltas
