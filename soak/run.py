"""Load + accounting + memory: a live llmsite on PostgreSQL + Redis under mixed traffic.

1. Start daphne (soak/server.py) with limits on its tenant: tokens per day and
   month, a budget with prices, `--concurrent` slots (so that clean 429s happen).
2. Warm up (`--warm-up` requests of the same traffic), then read the server's RSS.
3. Locust (soak/locustfile.py), `--users` at once, until `--requests` requests
   have completed or `--duration` has passed.
4. RSS again; soak/check.py matches the ledger to the usage records, the
   quota counters and the requests the server counted as abandoned (read from
   /metrics before and after). Exit status 0 when every check held.

    .venv/bin/python soak/run.py                                  # the documented default
    .venv/bin/python soak/run.py --users 10 --requests 200 --duration 120
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak.check import abandoned_total, check_accounting, check_engines, read_ledger
from soak.server import live_server, rss_bytes

CHAT = "qwen2.5-coder-0.5b-instruct"
BASE = "gemma-3-270m"
MB = 1024 * 1024


def load_models(base_url: str, key: str) -> None:
    """One request per model and kind, so that both engines are loaded before RSS is read."""
    import httpx

    chat = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with httpx.Client(base_url=base_url, timeout=300) as c:
        for path, body in (
            ("/v1/chat/completions", chat),
            ("/v1/completions", {"model": BASE, "prompt": "Hello", "max_tokens": 4}),
            ("/v1/embeddings", {"model": BASE, "input": "hello"}),
        ):
            r = c.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            if r.status_code != 200:
                raise RuntimeError(f"warm-up {path}: {r.status_code} {r.text[:300]}")


def run_locust(*, server, args, prefix: str, ledger: Path, requests: int, csv: Path) -> float:
    """Locust headless until `requests` have ended (or --duration); seconds it took."""
    env = {
        **os.environ,
        "SOAK_API_KEY": server.api_key,
        "SOAK_PREFIX": prefix,
        "SOAK_LEDGER": str(ledger),
        "SOAK_MAX_REQUESTS": str(requests),
        "SOAK_MAX_TOKENS": str(args.max_tokens),
        "SOAK_CHAT_MODEL": CHAT,
        "SOAK_BASE_MODEL": BASE,
    }
    locust = str(Path(sys.executable).with_name("locust"))
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            locust,
            "-f",
            str(Path(__file__).with_name("locustfile.py")),
            "--headless",
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.spawn_rate),
            "--run-time",
            f"{args.duration}s",
            "--stop-timeout",
            "300",
            "--host",
            server.base_url,
            "--csv",
            str(csv),
            "--only-summary",
        ],
        env=env,
    )
    # Every sent request writes its ledger line once it has ended, and no more are
    # sent past `requests`: a full ledger means nothing is in flight.
    while proc.poll() is None:
        done = sum(1 for _ in ledger.open()) if ledger.exists() else 0
        if done >= requests:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(1)
    proc.wait(600)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="requests after warm-up")
    parser.add_argument("--duration", type=int, default=1800, help="seconds at most")
    parser.add_argument(
        "--concurrent",
        type=int,
        default=32,
        help="the tenant's max_concurrent: below --users, so that clean 429s happen, and "
        "at the tenant's share of an engine's queue, so that tenant_queue_full does too",
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--warm-up", type=int, default=300, help="requests before RSS is read")
    parser.add_argument("--rss-limit-mb", type=float, default=50)
    parser.add_argument("--out", default="var/soak")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    prefix = f"soak-{run_id}"
    ledger_path = out / f"ledger-{run_id}.jsonl"
    quota_prefix = f"llmsite:soak:{run_id}"
    problems: list[str] = []
    with live_server({"LLMSITE_QUOTA_PREFIX": quota_prefix}) as (server, _jwt):
        redis_url = server.env["REDIS_URL"]
        server.manage(
            "set_quota",
            "--tenant",
            "live",
            "--tokens-per-day",
            "1000000000",
            "--tokens-per-month",
            "1000000000",
            "--budget",
            "100000",
            "--concurrent",
            str(args.concurrent),
        )
        for model in (CHAT, BASE):
            server.manage("set_price", model, "--prompt", "0.10", "--completion", "0.40")
        print(f"soak {run_id}: server {server.base_url} (pid {server.process.pid})", flush=True)
        # Warm-up: the same traffic, so that every engine slot, pool and cache the
        # measured run touches already exists when RSS is first read.
        load_models(server.base_url, server.api_key)
        abandoned_before = abandoned_total(base_url=server.base_url)
        warm_ledger = out / f"ledger-{run_id}-warm.jsonl"
        run_locust(
            server=server,
            args=args,
            prefix=f"{prefix}-warm",
            ledger=warm_ledger,
            requests=args.warm_up,
            csv=out / f"locust-{run_id}-warm",
        )
        time.sleep(2)
        rss_before = rss_bytes(server.process.pid)
        print(f"RSS after warm-up: {rss_before / MB:.1f} MB", flush=True)
        elapsed = run_locust(
            server=server,
            args=args,
            prefix=prefix,
            ledger=ledger_path,
            requests=args.requests,
            csv=out / f"locust-{run_id}",
        )
        time.sleep(2)
        rss_after = rss_bytes(server.process.pid)

        measured = read_ledger(ledger_path)
        ledger = read_ledger(warm_ledger) + measured
        acct_problems, figures = check_accounting(
            server=server,
            ledger=ledger,
            prefix=prefix,
            redis_url=redis_url,
            quota_prefix=quota_prefix,
            abandoned=abandoned_total(base_url=server.base_url) - abandoned_before,
        )
        problems += acct_problems
        engine_problems, engine_figures = check_engines(base_url=server.base_url)
        problems += engine_problems
        figures.update(engine_figures)
        growth = (rss_after - rss_before) / MB
        if growth >= args.rss_limit_mb:
            problems.append(f"RSS grew {growth:.1f} MB (limit {args.rss_limit_mb})")
        if server.process.poll() is not None:
            problems.append(f"the server died: exit {server.process.returncode}")
        figures.update(
            users=args.users,
            seconds=round(elapsed, 1),
            warm_up_requests=args.warm_up,
            measured_requests=len(measured),
            requests_per_second=round(len(measured) / elapsed, 2),
            rss_before_mb=round(rss_before / MB, 1),
            rss_after_mb=round(rss_after / MB, 1),
            rss_growth_mb=round(growth, 1),
        )
        ms = sorted(e["ms"] for e in measured if e["outcome"] == "ok")
        if ms:
            figures["ok_latency_ms"] = {
                "p50": ms[len(ms) // 2],
                "p95": ms[int(len(ms) * 0.95)],
                "max": ms[-1],
            }
        (out / f"result-{run_id}.json").write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures, indent=2), flush=True)
        if problems:
            (out / f"daphne-{run_id}.log").write_text(server.log_path.read_text(errors="replace"))
    for problem in problems:
        print("FAIL:", problem, flush=True)
    print("soak:", "FAILED" if problems else "ok", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
