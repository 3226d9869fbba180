"""What authentication, quota checks and usage accounting add to one /v1 request.

In one process and one run, on the same engine and model, alternately:
- direct: the engine alone generates one token for the prompt;
- full:   POST /v1/completions (max_tokens=1) through Django, DRF, API-key auth,
          the quota reservation (Redis when REDIS_URL is set, else DB locks),
          settlement and the usage record with its daily roll-up.

It prints the median and p99 of (full - direct) in milliseconds. Run with the
production-like setup: DATABASE_URL=postgresql://... REDIS_URL=redis://...

    .venv/bin/python bench/bench_overhead.py --runs 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _fresh_database() -> tuple[str | None, callable]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        return None, lambda: None
    import psycopg

    name = f"llmsite_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}")), drop


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def measure(runs: int) -> dict:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    from accounts.services import api_key_issue, tenant_get_or_create
    from billing.services import limits_set, price_set
    from inference.engine import SamplingParams
    from inference.models import LLMModel
    from inference.registry import registry

    model = await sync_to_async(LLMModel.objects.get)(model_id="gemma-3-270m")
    engine = await sync_to_async(registry.engine_for)(model)
    await sync_to_async(engine.wait_ready)(120)
    tenant = await sync_to_async(tenant_get_or_create)(slug="bench")
    key, raw = await sync_to_async(api_key_issue)(tenant=tenant, name="bench")
    # Every kind of limit on, so every check runs.
    await sync_to_async(limits_set)(
        tenant=tenant,
        rpm=10**6,
        tpm=10**9,
        tokens_per_day=10**12,
        tokens_per_month=10**12,
        max_concurrent=1000,
        monthly_budget=10**9,
    )
    await sync_to_async(limits_set)(tenant=tenant, api_key=key, rpm=10**6, max_concurrent=1000)
    await sync_to_async(price_set)(model=model, prompt_per_million=1, completion_per_million=2)
    prompt = "Hello"
    tokens = engine.tokenize(prompt)
    client = AsyncClient()
    auth = {"Authorization": f"Bearer {raw}"}
    body = {"model": "gemma-3-270m", "prompt": prompt, "max_tokens": 1, "temperature": 0}

    async def direct() -> float:
        start = time.perf_counter()
        async for _ in engine.submit(tokens, SamplingParams(max_tokens=1, temperature=0)):
            pass
        return time.perf_counter() - start

    async def full() -> float:
        start = time.perf_counter()
        response = await client.post(
            "/v1/completions", body, content_type="application/json", headers=auth
        )
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.content
        return elapsed

    for _ in range(5):  # warm-up
        await direct()
        await full()
    direct_ms, full_ms, added = [], [], []
    for i in range(runs):
        # Alternate the order so drift on a shared machine hits both sides alike.
        if i % 2:
            d, f = await direct(), await full()
        else:
            f, d = await full(), await direct()
        direct_ms.append(d * 1000)
        full_ms.append(f * 1000)
        added.append((f - d) * 1000)
    return {"direct": direct_ms, "full": full_ms, "added": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="llmsite-bench-")
    os.environ["LLMSITE_DATA_DIR"] = data_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmsite.settings")
    os.environ["LLMSITE_QUOTA_PREFIX"] = f"llmsite:bench:{uuid.uuid4().hex}"
    db_url, drop = _fresh_database()
    if db_url:
        os.environ["DATABASE_URL"] = db_url
    models_dir = Path(data_dir) / "models"
    models_dir.mkdir()
    for gguf in (ROOT / "var" / "models").glob("*.gguf"):
        (models_dir / gguf.name).symlink_to(gguf)
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        results = asyncio.run(measure(args.runs))
        backend = "redis" if settings.REDIS_URL else "database locks"
        database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        print(f"llmsite request overhead: {args.runs} paired runs, {database}, quotas on {backend}")
        print(f"{'':>22} {'median ms':>10} {'p99 ms':>10}")
        for name, label in (
            ("direct", "engine alone"),
            ("full", "full /v1 request"),
            ("added", "added by llmsite"),
        ):
            values = results[name]
            print(
                f"{label:>22} {statistics.median(values):>10.2f} {percentile(values, 0.99):>10.2f}"
            )
    finally:
        from django.db import connections

        connections.close_all()
        drop()


if __name__ == "__main__":
    main()
