"""The router: strategies on controlled figures, fallbacks, cooldown, aliases and `auto`."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.db import connections
from rest_framework.test import APIClient

from accounts.generations import auth_generations
from accounts.services import tenant_models_set
from billing.models import UsageRecord
from billing.services import price_set
from inference import router
from inference.engine import SamplingParams
from inference.model_admin import model_reload, model_unload
from inference.models import LLMModel
from inference.registry import registry
from inference.telemetry import live
from tests.helpers import sse_events
from tests.live import free_port

MODEL = "gemma-3-270m"


@pytest.fixture(autouse=True)
def fresh_router_state():
    live.reset()
    router.health.reset()
    yield
    live.reset()
    router.health.reset()


def row(model_id: str, **fields) -> LLMModel:
    return LLMModel(model_id=model_id, path="unused.gguf", **fields)


def ids(models) -> list[str]:
    return [m.model_id for m in models]


# -- strategies, on figures the test controls ------------------------------------------
def test_quality_first_picks_the_highest_quality_then_keeps_fallback_order():
    models = [row("a", quality=0.3), row("b", quality=0.9), row("c", quality=0.6)]
    order, reason = router.order_candidates(models, "quality-first", "t")
    assert ids(order) == ["b", "a", "c"]
    assert "0.9" in reason


def test_cost_optimized_picks_the_cheapest():
    models = [
        row("a", cost_per_million=Decimal("2")),
        row("b", cost_per_million=Decimal("0.25")),
        row("c", cost_per_million=Decimal("1")),
    ]
    order, reason = router.order_candidates(models, "cost-optimized", "t")
    assert ids(order) == ["b", "a", "c"]
    assert "0.25" in reason


def test_speed_priority_follows_measured_speed_not_declared_quality():
    models = [row("a", quality=1.0), row("b", quality=0.1), row("c", quality=0.5)]
    live.set("a", tokens_per_s=20.0, ttft_ms=50.0)
    live.set("b", tokens_per_s=55.0, ttft_ms=80.0)
    live.set("c", tokens_per_s=35.0, ttft_ms=40.0)
    order, reason = router.order_candidates(models, "speed-priority", "t")
    assert ids(order)[0] == "b"
    assert "55.0 tok/s" in reason


def test_speed_priority_measures_a_model_it_has_no_figures_for():
    live.set("a", tokens_per_s=80.0)
    order, reason = router.order_candidates([row("a"), row("b")], "speed-priority", "t")
    assert ids(order)[0] == "b"
    assert "unmeasured" in reason


def test_measured_figures_come_from_finished_requests():
    live.started("a")
    live.finished("a", ok=True, ttft_s=0.1, completion_tokens=11, decode_s=0.5)
    figures = live.get("a")
    assert figures.ttft_ms == pytest.approx(100.0)
    assert figures.tokens_per_s == pytest.approx(20.0)  # 10 tokens after the first in 0.5 s
    assert figures.in_flight == 0 and figures.requests == 1


def test_least_loaded_uses_in_flight_requests():
    live.set("a", in_flight=3)
    live.set("b", in_flight=0)
    live.set("c", in_flight=1)
    order, reason = router.order_candidates([row("a"), row("b"), row("c")], "least-loaded", "t")
    assert ids(order) == ["b", "a", "c"]
    assert "0 queued or running" in reason


def test_round_robin_spreads_evenly():
    models = [row("a"), row("b"), row("c")]
    firsts = Counter(
        ids(router.order_candidates(models, "round-robin", "rr-even")[0])[0] for _ in range(30)
    )
    assert firsts == {"a": 10, "b": 10, "c": 10}


def test_random_follows_weights():
    random.seed(7)
    models = [row("a", weight=0), row("b", weight=3), row("c", weight=1)]
    firsts = Counter(ids(router.order_candidates(models, "random", "t")[0])[0] for _ in range(400))
    assert firsts["a"] == 0
    assert firsts["b"] > 2 * firsts["c"] > 0


def test_balanced_prefers_the_model_better_on_every_figure():
    models = [
        row("a", quality=0.5, cost_per_million=Decimal("2")),
        row("b", quality=0.8, cost_per_million=Decimal("1")),
    ]
    live.set("a", tokens_per_s=20.0, ttft_ms=90.0, in_flight=2)
    live.set("b", tokens_per_s=40.0, ttft_ms=45.0, in_flight=0)
    order, reason = router.order_candidates(models, "balanced", "t")
    assert ids(order) == ["b", "a"]
    assert "quality 0.8" in reason and "40.0 tok/s" in reason


def test_balanced_trades_a_little_quality_for_much_more_speed():
    models = [row("slow", quality=0.6), row("fast", quality=0.5)]
    live.set("slow", tokens_per_s=10.0, ttft_ms=400.0)
    live.set("fast", tokens_per_s=60.0, ttft_ms=50.0)
    scores = router.balanced_scores(router.candidates_of(models))
    assert scores[1] > scores[0]
    assert ids(router.order_candidates(models, "balanced", "t")[0])[0] == "fast"


def test_a_failing_model_is_cooled_down_then_probed(settings):
    settings.LLMSITE_ROUTER_FAILURES = 3
    settings.LLMSITE_ROUTER_COOLDOWN = 30
    models = [row("a", quality=0.9), row("b", quality=0.5)]
    with time_machine.travel("2026-03-01 12:00:00", tick=False) as clock:
        router.health.failed("a")
        router.health.failed("a")
        assert ids(router.order_candidates(models, "quality-first", "t")[0])[0] == "a"
        router.health.failed("a")  # the third in a row
        order, reason = router.order_candidates(models, "quality-first", "t")
        assert ids(order) == ["b", "a"]
        assert "cooling down: a" in reason
        clock.shift(31)
        # Cooldown over: the next request tries it again (the probe) ...
        assert ids(router.order_candidates(models, "quality-first", "t")[0])[0] == "a"
        router.health.failed("a")  # ... which fails: cooled down again at once
        assert ids(router.order_candidates(models, "quality-first", "t")[0])[0] == "b"
        clock.shift(31)
        router.health.succeeded("a")  # a probe that works restores it fully
        assert router.health.state("a") == {
            "failures": 0,
            "cooled_down": False,
            "cooled_until": None,
        }


# -- through the API, with the real model ---------------------------------------------
def post(client, path="/v1/completions", **body):
    body.setdefault("model", MODEL)
    if path == "/v1/completions":
        body.setdefault("prompt", "Hello")
    else:
        body.setdefault("messages", [{"role": "user", "content": "Hello"}])
    body.setdefault("max_tokens", 2)
    return client.post(path, json.dumps(body), content_type="application/json")


@pytest.fixture
def broken(db, tmp_path):
    model = LLMModel.objects.create(
        model_id="broken", path=str(tmp_path / "missing.gguf"), quality=1.0
    )
    yield model
    registry.unload("broken")


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


@pytest.fixture
def silent_server():
    """Accepts connections and never answers: a backend that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def remote(model_id: str, base_url: str, **fields) -> LLMModel:
    return LLMModel.objects.create(
        model_id=model_id, backend="openai", base_url=base_url, path="", quality=1.0, **fields
    )


def alias(name: str, models: str, strategy: str = "quality-first") -> None:
    call_command("add_alias", name, "--strategy", strategy, "--models", models, stdout=None)


def test_alias_falls_back_when_the_first_model_fails_to_load(client, broken):
    alias("smart", f"broken,{MODEL}")
    r = post(client, model="smart")
    assert r.status_code == 200, r.content
    assert r.json()["model"] == MODEL
    assert r["x-llmsite-model"] == MODEL
    route = r["x-llmsite-route"]
    assert "strategy=quality-first" in route and "alias=smart" in route
    assert "fallback=1" in route and f"answered={MODEL}" in route
    records = UsageRecord.objects.filter(request_id=r["x-request-id"])
    assert [(u.model_id, u.status) for u in records] == [(MODEL, "ok")]
    assert router.health.state("broken")["failures"] == 1


def test_alias_falls_back_when_the_remote_refuses_connections_streaming(client):
    remote("far", refused_url())
    alias("smart", f"far,{MODEL}")
    r = post(client, path="/v1/chat/completions", model="smart", stream=True)
    assert r.status_code == 200
    assert r["x-llmsite-model"] == MODEL
    events = sse_events(r)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {MODEL}
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_alias_falls_back_when_the_remote_times_out(client, settings, silent_server):
    settings.LLMSITE_REMOTE_TIMEOUT = 1
    remote("hang", silent_server)
    alias("smart", f"hang,{MODEL}")
    r = post(client, model="smart")
    assert r.status_code == 200, r.content
    assert r["x-llmsite-model"] == MODEL
    assert "fallback=1" in r["x-llmsite-route"]


def test_a_remote_model_asked_for_by_id_does_not_fall_back(client):
    remote("far", refused_url())
    r = post(client, model="far")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "backend_unavailable"
    assert r["Retry-After"] == "5"
    assert UsageRecord.objects.get(request_id=r["x-request-id"]).status == "error"


def test_unknown_model_is_a_404_not_a_fallback(client):
    r = post(client, model="no-such-model")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "x-llmsite-model" not in r


def test_alias_of_models_the_tenant_may_not_use_is_a_404(client, tenant, gemma, broken):
    alias("hidden", "broken")
    tenant_models_set(tenant=tenant, models=[gemma])
    assert post(client, model="hidden").status_code == 404
    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "hidden" not in listed


# -- the route cache: fast on repeat, never stale --------------------------------------
def test_a_repeated_name_is_resolved_from_the_cache(tenant, gemma, django_assert_num_queries):
    first = router.route_resolve(tenant=tenant, api_key=None, name=MODEL, capability="completion")
    with django_assert_num_queries(1):  # the AuthGeneration check, nothing else
        again = router.route_resolve(
            tenant=tenant, api_key=None, name=MODEL, capability="completion"
        )
    assert ids(again.order) == ids(first.order) == [MODEL]


def test_generations_read_by_authentication_save_the_cache_its_own_read(
    tenant, gemma, django_assert_num_queries
):
    current = auth_generations(tenant.pk)
    router.route_resolve(
        tenant=tenant, api_key=None, name=MODEL, capability="completion", generations=current
    )
    with django_assert_num_queries(0):
        router.route_resolve(
            tenant=tenant, api_key=None, name=MODEL, capability="completion", generations=current
        )


def test_a_price_change_bills_the_very_next_request(client, gemma):
    price_set(model=gemma, prompt_per_million=Decimal(1), completion_per_million=Decimal(0))
    assert post(client).status_code == 200
    price_set(model=gemma, prompt_per_million=Decimal(1000), completion_per_million=Decimal(0))
    response = post(client)
    assert response.status_code == 200
    prompt_tokens = response.json()["usage"]["prompt_tokens"]
    latest = UsageRecord.objects.order_by("-id").first()
    assert latest.cost == Decimal(1000) * prompt_tokens / 1_000_000


def test_disabling_a_model_or_narrowing_an_allow_list_applies_at_once(client, tenant, gemma):
    assert post(client).status_code == 200
    gemma.enabled = False
    gemma.save()
    assert post(client).status_code == 404
    gemma.enabled = True
    gemma.save()
    assert post(client).status_code == 200
    tenant_models_set(tenant=tenant, models=[LLMModel.objects.create(model_id="other", path="x")])
    assert post(client).status_code == 404


def test_an_alias_change_applies_at_once(client, broken):
    alias("smart", MODEL)
    assert post(client, model="smart")["x-llmsite-model"] == MODEL
    alias("smart", "broken")
    assert post(client, model="smart").status_code == 503


def test_aliases_are_listed_and_retrievable(client):
    alias("fast", MODEL, strategy="speed-priority")
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["fast"]["owned_by"] == "llmsite-router"
    assert MODEL in listed
    r = client.get("/v1/models/fast")
    assert r.status_code == 200 and r.json()["id"] == "fast"


def test_auto_routes_with_the_default_strategy(client):
    r = post(client, model="auto")
    assert r.status_code == 200
    # Both bundled models serve completions.
    assert r.json()["model"] in {MODEL, "qwen2.5-coder-0.5b-instruct"}
    assert r["x-llmsite-route"].startswith("strategy=balanced")


def test_embeddings_on_an_alias_without_embedding_models_is_a_400(client, broken):
    broken.embeddings = False
    broken.save()
    alias("chatty", "broken")
    r = client.post(
        "/v1/embeddings",
        json.dumps({"model": "chatty", "input": "hi"}),
        content_type="application/json",
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "model_not_supported"


def test_router_figures_move_with_traffic(client):
    post(client, max_tokens=4, temperature=0)
    figures = live.get(MODEL)
    assert figures.requests == 1 and figures.in_flight == 0
    assert figures.ttft_ms is not None and figures.ttft_ms > 0


@pytest.mark.django_db(transaction=True)
def test_unload_and_reload_while_requests_run(api_key, gemma):
    def call(i: int) -> int:
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
        try:
            return post(c, prompt=f"Count {i}:", max_tokens=6).status_code
        finally:
            connections.close_all()  # this worker thread's own connection

    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(call, i) for i in range(4)]
        model_unload(model=gemma)  # queued requests finish; new ones load it again
        second = [pool.submit(call, i) for i in range(4, 8)]
        model_reload(model=gemma)
        third = [pool.submit(call, i) for i in range(8, 10)]
        codes = [f.result() for f in first + second + third]
    assert codes == [200] * 10
    assert UsageRecord.objects.filter(status="ok").count() == 10


# -- loading: idle unload and the memory budget -------------------------------------
@pytest.fixture
def twin(db, gemma):
    """The bundled GGUF registered again with other settings: a second engine."""
    path = registry.engine_for(gemma).spec.path
    model = LLMModel.objects.create(model_id="gemma-twin", path=str(path), n_ctx=512)
    yield model
    registry.unload("gemma-twin")


def test_an_idle_model_is_unloaded_after_its_timeout(twin):
    twin.idle_unload_seconds = 60
    twin.save()
    engine = registry.engine_for(twin)
    assert engine.wait_ready(120)
    assert registry.reap_idle() == []  # just used
    idle_since = registry.idle_seconds("gemma-twin")
    assert idle_since is not None and idle_since < 60
    later = time.monotonic() + 61
    assert registry.reap_idle(now=later) == ["gemma-twin"]
    assert registry.get("gemma-twin") is None


def test_the_memory_budget_unloads_the_least_recently_used_idle_model(gemma, twin, settings):
    size_mb = registry.engine_for(gemma).spec.path.stat().st_size / 2**20
    settings.LLMSITE_MEMORY_BUDGET_MB = int(size_mb * 1.5)  # room for one, not two
    assert registry.engine_for(gemma).wait_ready(120)
    twin_engine = registry.engine_for(twin)
    assert twin_engine.wait_ready(120)
    assert registry.get(MODEL) is None  # made room
    # Asking for the first again evicts the now least recently used twin.
    assert registry.engine_for(gemma).wait_ready(120)
    assert registry.get("gemma-twin") is None


def test_the_memory_budget_refuses_a_load_while_busy_models_fill_it(client, gemma, twin, settings):
    size_mb = registry.engine_for(gemma).spec.path.stat().st_size / 2**20
    settings.LLMSITE_MEMORY_BUDGET_MB = int(size_mb * 1.5)
    engine = registry.engine_for(gemma)
    assert engine.wait_ready(120)
    handle = engine.submit(engine.tokenize("Once upon a time"), SamplingParams(max_tokens=200))
    try:
        r = post(client, model="gemma-twin")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_unavailable"
        assert "budget" in r.json()["error"]["message"]
        assert registry.get(MODEL) is engine  # the busy model stayed
    finally:
        handle.cancel()
        for _ in handle:
            pass
