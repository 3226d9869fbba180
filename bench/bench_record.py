"""The usage record's write, which every /v1 request commits before it answers.

In one process, on a fresh PostgreSQL database, interleaved in rounds so that
the machine's drift hits both alike, `billing.services.usage_record` (the
record and its daily roll-up in one statement, then the commit) with the
statement sent two ways:
- prepared: as the request path sends it (`llmsite.db.fetch_one_prepared`),
            bound on the server and planned once per pooled connection;
- plain:    through Django's usual cursor, which binds on the client, so the
            server parses and plans it on every request.

Each call runs as the request path runs it: in a worker thread, the pooled
connection handed back after it. Prints medians, p90 and the ratio.

    DATABASE_URL=postgresql://... .venv/bin/python bench/bench_record.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_overhead import fresh_database, percentile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("needs PostgreSQL: set DATABASE_URL=postgresql://...")

    os.environ["LLMSITE_DATA_DIR"] = tempfile.mkdtemp(prefix="llmsite-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmsite.settings")
    db_url, drop = fresh_database()
    os.environ["DATABASE_URL"] = db_url
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        samples = measure(args.rounds, args.per_round)
    finally:
        from django.db import connections

        connections.close_all()
        for conn in connections.all(initialized_only=True):
            conn.close_pool()
        drop()
    report(samples)


def measure(rounds: int, per_round: int) -> dict[str, list[float]]:
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    import billing.services
    from accounts.services import api_key_issue, tenant_get_or_create
    from billing.services import usage_record
    from llmsite.db import fetch_one_prepared, pooled

    def plain(sql, params):
        with connections["default"].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    ways = {"prepared": fetch_one_prepared, "plain": plain}
    samples: dict[str, list[float]] = {name: [] for name in ways}

    def run() -> None:
        tenant = tenant_get_or_create(slug="bench")
        key, _ = api_key_issue(tenant=tenant)

        @pooled
        def write(i: int) -> None:
            usage_record(
                tenant=tenant,
                api_key=key,
                endpoint="chat.completions",
                model_id="gemma-3-270m",
                end_user="",
                prompt_tokens=20,
                completion_tokens=1,
                status="ok",
                request_id=f"bench-{uuid.uuid4().hex}",
                latency_ms=30,
                ttft_ms=20,
            )

        for rnd in range(rounds + 1):  # round 0 warms up both ways
            order = list(ways) if rnd % 2 else list(ways)[::-1]
            for name in order:
                billing.services.fetch_one_prepared = ways[name]  # type: ignore[assignment]
                for i in range(per_round):
                    start = time.perf_counter()
                    write(i)
                    if rnd:
                        samples[name].append((time.perf_counter() - start) * 1000)
        billing.services.fetch_one_prepared = fetch_one_prepared

    with ThreadPoolExecutor(1) as pool:  # one worker thread, as the request path's
        pool.submit(run).result()
    return samples


def report(samples: dict[str, list[float]]) -> None:
    print(f"usage record write, {len(samples['plain'])} per side (ms)")
    print(f"{'statement':<10} {'median':>8} {'p90':>8} {'p99':>8}")
    for name, values in samples.items():
        print(
            f"{name:<10} {statistics.median(values):8.3f} {percentile(values, 0.9):8.3f}"
            f" {percentile(values, 0.99):8.3f}"
        )
    ratio = statistics.median(samples["prepared"]) / statistics.median(samples["plain"])
    print(f"prepared / plain median: {ratio:.2f}x")


if __name__ == "__main__":
    main()
