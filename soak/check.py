"""The soak's accounting check: the ledger the load wrote against the server's records.

- 0 requests lost: every request ended in a success or a clean 429/503.
- Exactly one usage record per request (batch: one per item), none unaccounted for;
  a request the client dropped (`disconnected`) too, marked `cancelled` (or `ok`
  when it had finished). One dropped as soon as it was sent (a stream, a batch)
  may have been cancelled before any service took it: then it has no record, and
  the server's llmsite_requests_abandoned_total must have counted it (`abandoned`,
  the counter's growth over the run). A WebSocket closed mid-generation owes its
  record like any other.
- The tenant's quota counters in Redis equal its records: tokens per day and per
  month, the monthly budget in nanos; no concurrency lease left held.
- Engine slots freed (check_engines): /metrics shows nothing in flight or queued.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

NANOS = Decimal(1_000_000_000)


def read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_accounting(
    *,
    server,
    ledger: list[dict],
    prefix: str,
    redis_url: str,
    quota_prefix: str,
    abandoned: int | None = None,
) -> tuple[list[str], dict]:
    """Problems found (empty: all good) and the figures."""
    problems: list[str] = []
    outcomes = Counter(e["outcome"] for e in ledger)
    lost = [e for e in ledger if e["outcome"] == "lost"]
    if lost:
        problems.append(f"{len(lost)} requests lost, e.g. {lost[:3]}")

    # The WebSocket's records carry a server-made id (`ws_<hex>`), never the client's
    # request_id: they are counted, not matched (only the load uses the socket).
    sockets = [e for e in ledger if e["kind"] == "ws"]
    expected = Counter(rid for e in ledger if e["kind"] != "ws" for rid in e["records"])
    # A stream's record is written in the service's `finally`, just after its last chunk.
    for _ in range(20):
        rows = server.query(
            "SELECT request_id, status FROM billing_usagerecord WHERE request_id LIKE ?",
            (f"{prefix}-%",),
        )
        if len(rows) >= sum(expected.values()):
            break
        time.sleep(0.5)
    ws_records = server.query(
        "SELECT COUNT(*) FROM billing_usagerecord WHERE request_id LIKE ?", ("ws\\_%",)
    )[0][0]
    if ws_records != len(sockets):
        problems.append(f"{len(sockets)} WebSocket requests, {ws_records} records")
    got = Counter(r[0] for r in rows)
    missing = sorted(rid for rid in expected if got[rid] == 0)
    doubled = sorted(rid for rid in expected if got[rid] > 1)
    stray = sorted(rid for rid in got if rid not in expected)
    # A batch refused as a whole (a clean 429/503 on the envelope) ran no item.
    refused_batches = {
        rid
        for e in ledger
        if e["kind"] == "batch" and e["outcome"] == "refused"
        for rid in e["records"]
    }
    missing = [rid for rid in missing if rid not in refused_batches]
    # A request dropped right after it was sent may be cut off before any service
    # takes it (Django cancels the view on `http.disconnect`): nothing was
    # reserved or generated, so no record is owed; the server counts it as
    # abandoned instead. All of its records or none: a batch with some items
    # recorded and others not lost the others.
    unstarted = [e for e in ledger if e["outcome"] == "disconnected" and e.get("at") == "sent"]
    unrecorded_unstarted = sorted(
        e["id"] for e in unstarted if not any(got[rid] for rid in e["records"])
    )
    excused = {rid for e in unstarted if e["id"] in unrecorded_unstarted for rid in e["records"]}
    missing = [rid for rid in missing if rid not in excused]
    if abandoned is None:
        problems.append("the server's abandoned-request counter was not read")
    elif abandoned != len(unrecorded_unstarted):
        problems.append(
            f"{len(unrecorded_unstarted)} requests dropped on send left no record, but the"
            f" server counted {abandoned} abandoned, e.g. {unrecorded_unstarted[:5]}"
        )
    if missing:
        problems.append(f"{len(missing)} requests have no usage record, e.g. {missing[:5]}")
    if doubled:
        problems.append(f"{len(doubled)} requests have several usage records, e.g. {doubled[:5]}")
    if stray:
        problems.append(f"{len(stray)} usage records match no request sent, e.g. {stray[:5]}")

    (tenant_pk,) = server.query("SELECT id FROM accounts_tenant WHERE slug = ?", ("live",))[0]
    now = datetime.now(UTC)
    day = now.strftime("%Y-%m-%d")
    tokens_today, cost_today = server.query(
        "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost), 0) "
        "FROM billing_usagerecord WHERE tenant_id = ? AND created_at >= ?",
        (tenant_pk, f"{day}T00:00:00+00:00"),
    )[0]
    import redis

    r = redis.Redis.from_url(redis_url)
    scope = f"{quota_prefix}:t{tenant_pk}"
    counters = {
        "tokens_per_day": int(r.get(f"{scope}:tokens_per_day:{now:%Y%m%d}") or 0),
        "tokens_per_month": int(r.get(f"{scope}:tokens_per_month:{now:%Y%m}") or 0),
        "budget_nanos": int(r.get(f"{scope}:budget:{now:%Y%m}") or 0),
    }
    now_ms = int(time.time() * 1000)
    leases = r.zcount(f"{scope}:concurrent", now_ms, "+inf")
    cost_nanos = int(Decimal(cost_today) * NANOS)
    if counters["tokens_per_day"] != tokens_today:
        problems.append(
            f"tokens per day: counter {counters['tokens_per_day']}, records {tokens_today}"
        )
    if counters["tokens_per_month"] != tokens_today and now.day != 1:
        # Records of earlier days this month would count too; the run made a fresh tenant.
        problems.append(
            f"tokens per month: counter {counters['tokens_per_month']}, records {tokens_today}"
        )
    # Each request's cost is rounded to nanos on its own; the records keep 8 decimals.
    if abs(counters["budget_nanos"] - cost_nanos) > 10 * max(1, len(rows)):
        problems.append(f"budget: counter {counters['budget_nanos']} nanos, records {cost_nanos}")
    if leases:
        problems.append(f"{leases} concurrency leases still held")
    dropped = {
        rid
        for e in ledger
        if e["outcome"] == "disconnected" and e["kind"] != "ws"
        for rid in e["records"]
    }
    dropped_status = Counter(r[1] for r in rows if r[0] in dropped)
    # A batch item may also have been refused on its own (its 429) before the drop.
    if set(dropped_status) - {"cancelled", "ok", "rejected"}:
        problems.append(f"dropped requests recorded as {dict(dropped_status)}")
    figures = {
        "requests": len(ledger),
        "disconnected_at": dict(
            Counter(f"{e['kind']}:{e.get('at')}" for e in ledger if e["outcome"] == "disconnected")
        ),
        "disconnected_record_status": dict(dropped_status),
        "dropped_on_send_without_record": len(unrecorded_unstarted),
        "abandoned_counted": abandoned,
        "websocket_dropped": sum(
            1 for e in sockets if e.get("at") == "chunks" and e["outcome"] == "disconnected"
        ),
        "outcomes": dict(outcomes),
        "by_kind": dict(Counter(e["kind"] for e in ledger)),
        "records_expected": sum(expected.values()),
        "records_found": len(rows),
        "websocket_requests": len(sockets),
        "websocket_records": ws_records,
        "record_status": dict(Counter(r[1] for r in rows)),
        "tokens_today_records": int(tokens_today),
        "counters": counters,
        "cost_nanos_records": cost_nanos,
        "leases_held": leases,
    }
    return problems, figures


def abandoned_total(*, base_url: str) -> int:
    """The server's llmsite_requests_abandoned_total, read from /metrics on loopback."""
    import httpx

    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith("llmsite_requests_abandoned_total "):
            return int(float(line.rpartition(" ")[2]))
    raise RuntimeError("llmsite_requests_abandoned_total missing from /metrics")


ENGINE_GAUGES = (
    "llmsite_engine_in_flight",
    "llmsite_engine_queue_depth",
    "llmsite_model_in_flight",
)


def check_engines(*, base_url: str, wait: float = 15) -> tuple[list[str], dict]:
    """Once the load is over, nothing may stay in flight or queued on any engine
    (a dropped stream's slot freed): the gauges of /metrics, read from loopback."""
    import httpx

    busy: dict[str, float] = {}
    deadline = time.monotonic() + wait
    while True:
        text = httpx.get(f"{base_url}/metrics", timeout=30).text
        busy = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if line.startswith(ENGINE_GAUGES) and float(value) != 0:
                busy[name] = float(value)
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    problems = [f"engine slots still busy after the load: {busy}"] if busy else []
    return problems, {"engine_busy_after": busy}
