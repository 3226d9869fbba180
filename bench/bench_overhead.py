"""What authentication, quota checks and usage accounting add to one /v1 request.

In one process and one run, on the same engine and model, in rotating order:
- engine: the engine alone generates one token for the already-tokenized prompt;
- bare:   POST /v1/completions (max_tokens=1) through the same middleware, DRF,
          serializer, model lookup, tokenizer, engine and JSON rendering, with the
          tenant machinery switched off: no authentication, no quota reservation or
          settlement, no usage record, no x-ratelimit headers. The view that does
          this is defined below and routed only inside this script;
- full:   the real POST /v1/completions with an API key, every kind of limit on
          (quotas on Redis when REDIS_URL is set, else database locks), settlement,
          the usage record and its daily roll-up.

"added by the tenant machinery" is full - bare, paired per iteration: that is the
figure the goal (median under 3 ms) is about. full - engine is printed as well;
it also counts Django, DRF, request parsing, tokenizing and rendering, which a
server without tenants pays too.

Each request's own engine time (submit to the engine thread's Finished event)
is also recorded, and "decode jitter removed" is (full - its engine time) -
(bare - its engine time): the same paired difference without the spread of two
independent llama.cpp decodes, which on a shared 2-core machine is most of the
raw difference's p99 (compare the engine alone's median and p99).

On PostgreSQL it also times, in the same rotation, one durable commit of a one-row
INSERT: the usage record is committed before the response, so that is the floor
of what the machinery can add on this machine's disk.

The engine runs on one thread by default (--threads): with as many threads as
cores on a shared machine, llama.cpp's thread barrier turns any preemption into
tens of milliseconds of noise on every side. The machinery is the same code
whatever the engine's thread count. Run with the production-like setup:

    DATABASE_URL=postgresql://... REDIS_URL=redis://... .venv/bin/python bench/bench_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE_PATH = "/bench-bare/v1/completions"


def fresh_database() -> tuple[str | None, callable]:
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


def _route_bare_view(principal) -> None:
    """Serve the bare view next to the real URLs, in this process only.

    The seam is the request's accounting: the service builds it in one place
    (`services._start`) and reserves quota and writes the usage record only
    through it. A request made as the bare view's principal gets an accounting
    whose reservation and record do nothing; everything else is the real
    service: validation, route resolution, the backend with its fallback loop,
    the response and its headers.
    """
    from dataclasses import dataclass

    from django.conf import settings
    from django.urls import clear_url_caches, path
    from rest_framework.permissions import AllowAny

    from accounts.authentication import Principal
    from inference import services
    from inference.accounting import Accounting
    from inference.api import respond
    from llmsite import urls
    from llmsite.drf import AsyncAPIView

    @dataclass(frozen=True)
    class BarePrincipal(Principal):
        pass

    class NoAccounting(Accounting):
        async def reserve(self, *, model, max_completion_tokens: int, count_request=True):
            pass

        async def write(self) -> None:
            self.written = True

    def accounting(*, principal, **fields) -> Accounting:
        kind = NoAccounting if isinstance(principal, BarePrincipal) else Accounting
        return kind(principal=principal, **fields)

    services.Accounting = accounting  # the name `services._start` builds it by
    bare = BarePrincipal(tenant=principal.tenant, api_key=principal.api_key)

    class BareCompletionView(AsyncAPIView):
        # The same model lookup (the bench tenant and key, resolved once at start-up),
        # tokenizer, engine and response shaping as /v1/completions; nothing else.
        authentication_classes: list = []
        permission_classes = [AllowAny]

        async def post(self, request):
            return respond(
                await services.completion_create(
                    principal=bare,
                    body=request.data,
                    request_id=request._request.request_id,
                    endpoint="completions",
                )
            )

    module = types.ModuleType("bench_overhead_urls")
    module.urlpatterns = [
        path(BARE_PATH.lstrip("/"), BareCompletionView.as_view()),
        *urls.urlpatterns,
    ]
    module.handler404 = urls.handler404
    module.handler500 = urls.handler500
    sys.modules[module.__name__] = module
    settings.ROOT_URLCONF = module.__name__
    clear_url_caches()


def _commit_probe():
    """One durable autocommit INSERT on the benchmark's database, timed in its thread."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_commit_probe (id bigserial, at timestamptz)")

    def commit() -> float:
        with connection.cursor() as cursor:
            start = time.perf_counter()
            cursor.execute("INSERT INTO bench_commit_probe (at) VALUES (now())")
            return time.perf_counter() - start

    return commit


async def measure(runs: int) -> dict:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    from accounts.authentication import Principal
    from accounts.models import ApiKey
    from accounts.services import api_key_issue, tenant_get_or_create
    from billing.models import UsageRecord
    from billing.services import limits_set, price_set
    from inference.engine import SamplingParams
    from inference.engine.events import Finished
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
    key = await sync_to_async(ApiKey.objects.select_related("tenant").get)(pk=key.pk)
    _route_bare_view(Principal(tenant=key.tenant, api_key=key))

    # Each request's own engine time, from submit to the engine thread's
    # Finished event (queue wait and decode): subtracted per request for the
    # "decode jitter removed" rows, so that the spread of one llama.cpp decode on
    # a shared machine is not read as the machinery's tail.
    engine_ms: list[float] = []
    enqueue = engine._enqueue

    def timed_enqueue(job) -> None:
        start, emit = time.perf_counter(), job.handle.emit

        def timed_emit(event, deferred=None) -> None:
            if isinstance(event, Finished):
                engine_ms.append((time.perf_counter() - start) * 1000)
            emit(event, deferred)

        job.handle.emit = timed_emit
        enqueue(job)

    engine._enqueue = timed_enqueue

    prompt = "Hello"
    tokens = engine.tokenize(prompt)
    client = AsyncClient()
    auth = {"Authorization": f"Bearer {raw}"}
    body = {"model": "gemma-3-270m", "prompt": prompt, "max_tokens": 1, "temperature": 0}

    async def engine_alone() -> float:
        start = time.perf_counter()
        async for _ in engine.submit(tokens, SamplingParams(max_tokens=1, temperature=0)):
            pass
        return time.perf_counter() - start

    async def post(url: str, headers: dict) -> float:
        start = time.perf_counter()
        response = await client.post(url, body, content_type="application/json", headers=headers)
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.content
        return elapsed

    async def bare() -> float:
        return await post(BARE_PATH, {})

    async def full() -> float:
        return await post("/v1/completions", auth)

    sides = {"engine": engine_alone, "bare": bare, "full": full}
    probe = await sync_to_async(_commit_probe)()
    if probe is not None:
        sides["commit"] = sync_to_async(probe)
    for _ in range(10):  # warm-up
        for run in sides.values():
            await run()
    records_before = await sync_to_async(UsageRecord.objects.count)()
    samples: dict[str, list[float]] = {name: [] for name in sides}
    outside: dict[str, list[float]] = {"full": [], "bare": []}  # wall - own engine time
    order = list(sides)
    for i in range(runs):
        # Rotate the order so drift on a shared machine hits every side alike.
        for name in order[i % len(order) :] + order[: i % len(order)]:
            engine_ms.clear()
            samples[name].append(await sides[name]() * 1000)
            if name in outside:
                assert len(engine_ms) == 1, engine_ms
                outside[name].append(samples[name][-1] - engine_ms[0])
    records = await sync_to_async(UsageRecord.objects.count)() - records_before
    assert records == runs, f"{records} usage records for {runs} full requests"
    return {
        **samples,
        "added": [f - b for f, b in zip(samples["full"], samples["bare"])],
        "added_engine": [f - e for f, e in zip(samples["full"], samples["engine"])],
        "bare_engine": [b - e for b, e in zip(samples["bare"], samples["engine"])],
        "added_outside": [f - b for f, b in zip(outside["full"], outside["bare"])],
        "full_outside": outside["full"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1)")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="llmsite-bench-")
    os.environ["LLMSITE_DATA_DIR"] = data_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmsite.settings")
    os.environ["LLMSITE_QUOTA_PREFIX"] = f"llmsite:bench:{uuid.uuid4().hex}"
    os.environ["LLMSITE_N_THREADS"] = str(args.threads)
    db_url, drop = fresh_database()
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
        print(
            f"llmsite request overhead: {args.runs} runs of each side, {database}, "
            f"quotas on {backend}, /v1/completions with max_tokens=1, "
            f"engine on {args.threads} thread(s)"
        )
        print(f"{'':>44} {'median ms':>10} {'p99 ms':>10}")
        for name, label in (
            ("engine", "engine alone"),
            ("bare", "bare /v1 request (no tenant machinery)"),
            ("full", "full /v1 request"),
            ("added", "ADDED BY THE TENANT MACHINERY (full - bare)"),
            ("added_engine", "full - engine alone (includes Django/DRF)"),
            ("bare_engine", "bare - engine alone (Django/DRF/JSON only)"),
            ("commit", "one durable commit (floor of added)"),
            ("full_outside", "full, own engine time subtracted"),
            ("added_outside", "ADDED, decode jitter removed (per request)"),
        ):
            if name not in results:
                continue
            values = results[name]
            print(
                f"{label:>44} {statistics.median(values):>10.2f} {percentile(values, 0.99):>10.2f}"
            )
    finally:
        from django.db import connections

        connections.close_all()
        drop()


if __name__ == "__main__":
    main()
