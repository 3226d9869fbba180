"""An idle engine waits a moment for the requests its gateway says are on their way.

A burst of simultaneous requests reaches the engine one at a time, a few
milliseconds apart (each crosses the gateway first). Without a hint the first
prompt would be prefilled alone and the others would wait out its prefill; with
one, the engine admits them together and prefills them in one decode step.

Engine tests run against the real model and assert on the engine's counters and
on what was admitted together, never on time; the gateway test holds the quota
reservation until both requests are prepared (a fake for scheduling only).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from billing.services import limits_set
from inference import services
from inference.backends import local
from inference.engine import Finished, LlamaEngine, SamplingParams
from inference.registry import spec_for
from llmsite.middleware import requests_arriving
from tests.helpers import no_eos

pytestmark = pytest.mark.django_db

ONE_TOKEN = SamplingParams(max_tokens=1, temperature=0)


@pytest.fixture
def engine_with_window(gemma):
    """A private engine whose admission window is long enough never to run out in a test."""
    engines = []

    def make(window_ms: float) -> LlamaEngine:
        spec = dataclasses.replace(
            spec_for(gemma), n_ctx=512, n_parallel=4, admission_window_ms=window_ms
        )
        engine = LlamaEngine(spec)
        assert engine.wait_ready(60)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def finished(handle, timeout: float = 60) -> Finished:
    """The handle's last event, read within `timeout` seconds."""
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(handle), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"no Finished within {timeout} s"
    assert isinstance(events[-1], Finished), events
    return events[-1]


def test_an_announced_burst_is_admitted_and_prefilled_together(engine_with_window):
    engine = engine_with_window(60_000)
    prompt = engine.tokenize("The harbour master counted the boats")
    steps = engine.stats()["decode_steps"]
    first = engine.submit(prompt, ONE_TOKEN, coming=2, source="gateway-1")
    # Two more are on their way: the first waits for them, not for the window.
    assert not first.started.wait(0.5)
    second = engine.submit(prompt[:-1], ONE_TOKEN, coming=1, source="gateway-1")
    assert not second.started.wait(0.2)
    third = engine.submit(prompt[:-2], ONE_TOKEN, coming=0, source="gateway-1")
    for handle in (first, second, third):
        assert finished(handle).completion_tokens == 1
    stats = engine.stats()
    # One decode step prefilled all three prompts and gave each its one token.
    assert stats["decode_steps"] - steps == 1
    assert stats["admission_waits"] == 1


def test_every_source_counts_until_its_latest_hint_is_zero(engine_with_window):
    engine = engine_with_window(60_000)
    prompt = engine.tokenize("Two gateways send a request each")
    first = engine.submit(prompt, ONE_TOKEN, coming=0, source="gateway-1")
    # gateway-1 has nothing more on its way, but this engine is not idle any
    # more once it started the first: gateway-2's hint only matters while idle.
    assert finished(first).completion_tokens == 1
    steps = engine.stats()["decode_steps"]
    a = engine.submit(prompt, ONE_TOKEN, coming=1, source="gateway-1")
    b = engine.submit(prompt[:-1], ONE_TOKEN, coming=1, source="gateway-2")
    c = engine.submit(prompt[:-2], ONE_TOKEN, coming=0, source="gateway-1")
    assert not a.started.wait(0.3)  # gateway-2 still has one on its way
    d = engine.submit(prompt[:-3], ONE_TOKEN, coming=0, source="gateway-2")
    for handle in (a, b, c, d):
        assert finished(handle).completion_tokens == 1
    assert engine.stats()["decode_steps"] - steps == 1


def test_without_a_hint_nothing_waits(engine_with_window):
    engine = engine_with_window(60_000)
    prompt = engine.tokenize("Nobody else is coming")
    handle = engine.submit(prompt, ONE_TOKEN)  # a 60 s wait would time drain() out
    assert finished(handle, timeout=30).completion_tokens == 1
    assert engine.stats()["admission_waits"] == 0


def test_a_request_that_never_comes_costs_one_window_once(engine_with_window):
    engine = engine_with_window(200)
    prompt = engine.tokenize("A request announced but refused on its way")
    lonely = engine.submit(prompt, ONE_TOKEN, coming=1, source="gateway-1")
    assert finished(lonely).completion_tokens == 1
    assert engine.stats()["admission_waits"] == 1
    # The stale hint left with the job that carried it.
    again = engine.submit(prompt, ONE_TOKEN, coming=0, source="gateway-1")
    assert finished(again).completion_tokens == 1
    assert engine.stats()["admission_waits"] == 1


def test_a_busy_engine_admits_at_once(engine_with_window):
    engine = engine_with_window(60_000)
    prompt = engine.tokenize("Already decoding")
    endless = SamplingParams(max_tokens=400, temperature=0, logit_bias=no_eos(engine))
    long = engine.submit(prompt, endless)
    assert long.started.wait(30)
    # Sequences are decoding: a new prompt joins the next step, hint or not.
    joined = engine.submit(prompt[:-1], ONE_TOKEN, coming=3, source="gateway-1")
    assert finished(joined, timeout=30).completion_tokens == 1
    long.cancel()
    finished(long)
    assert engine.stats()["admission_waits"] == 0


# -- the gateway's side: what each submission says is on its way ----------------------
def _auth(api_key: str) -> dict:
    return {"Authorization": f"Bearer {api_key}"}


async def _two_completions_at_once(api_key: str) -> None:
    client = AsyncClient()
    body = {"model": "gemma-3-270m", "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/completions", body, content_type="application/json", headers=_auth(api_key)
            )
            for _ in range(2)
        )
    )
    assert [r.status_code for r in responses] == [200, 200], [r.content for r in responses]


@pytest.mark.django_db(transaction=True)
async def test_a_gateway_tells_the_engine_how_many_requests_are_on_their_way(
    api_key, gemma, monkeypatch
):
    hints: list[int] = []
    original_submit = LlamaEngine.submit

    def recording(self, *args, coming=0, **kwargs):
        hints.append(coming)
        return original_submit(self, *args, coming=coming, **kwargs)

    monkeypatch.setattr(LlamaEngine, "submit", recording)
    # Hold each reservation until both requests are prepared: the two are then
    # on their way together, whatever order the event loop ran them in.
    both_prepared = asyncio.Event()
    original_reserve = services._reserve

    async def reserve(acct, model, tokens):
        if local._on_their_way[gemma.model_id] >= 2:
            both_prepared.set()
        await asyncio.wait_for(both_prepared.wait(), 30)
        await original_reserve(acct, model, tokens)

    monkeypatch.setattr(services, "_reserve", reserve)
    await _two_completions_at_once(api_key)
    # The first submitted said one more was coming; the second, none.
    assert hints == [1, 0]
    assert local._on_their_way[gemma.model_id] == 0


@pytest.mark.django_db(transaction=True)
async def test_a_request_refused_on_its_way_is_no_longer_counted(api_key, tenant, gemma):
    # Refused at the token reservation, after its prompt was planned.
    await sync_to_async(limits_set)(tenant=tenant, tpm=10)
    client = AsyncClient()
    body = {"model": "gemma-3-270m", "prompt": "Hello there", "max_tokens": 50}
    refused = await client.post(
        "/v1/completions", body, content_type="application/json", headers=_auth(api_key)
    )
    assert refused.status_code == 429, refused.content
    assert local._on_their_way[gemma.model_id] == 0
    bad = await client.post(
        "/v1/completions",
        {**body, "max_tokens": 1, "logit_bias": {"999999999": 1}},
        content_type="application/json",
        headers=_auth(api_key),
    )
    assert bad.status_code == 400, bad.content
    assert local._on_their_way[gemma.model_id] == 0


@pytest.mark.django_db(transaction=True)
async def test_a_request_received_but_not_yet_routed_counts_as_on_its_way(
    api_key, gemma, monkeypatch
):
    hints: list[int] = []
    submitted = asyncio.Event()
    original_submit = LlamaEngine.submit

    def recording(self, *args, coming=0, **kwargs):
        hints.append(coming)
        submitted.set()
        return original_submit(self, *args, coming=coming, **kwargs)

    monkeypatch.setattr(LlamaEngine, "submit", recording)
    # The second request to reach the router waits there until the first has
    # been submitted: it has been received (middleware, authentication) but its
    # model is not known yet, as in a burst whose tail is still being authenticated.
    original_route = services._route_resolve
    routed = 0

    async def route(*args, **kwargs):
        nonlocal routed
        routed += 1
        if routed == 2:
            await asyncio.wait_for(submitted.wait(), 30)
        return await original_route(*args, **kwargs)

    monkeypatch.setattr(services, "_route_resolve", route)
    await _two_completions_at_once(api_key)
    assert hints == [1, 0]
    assert requests_arriving() == 0


@pytest.mark.django_db(transaction=True)
async def test_a_request_refused_before_routing_is_no_longer_arriving(api_key):
    client = AsyncClient()
    body = {"model": "gemma-3-270m", "prompt": "Hello", "max_tokens": 1}
    unknown = await client.post(
        "/v1/completions", body, content_type="application/json", headers=_auth("sk-llm-nope")
    )
    assert unknown.status_code == 401, unknown.content
    invalid = await client.post(
        "/v1/completions", "{", content_type="application/json", headers=_auth(api_key)
    )
    assert invalid.status_code == 400, invalid.content
    assert requests_arriving() == 0
