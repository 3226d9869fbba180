"""Embeddings interleaved with decoding, their cancellation, and each owner's share.

Against the real model, except fair_pick (pure scheduling logic). Assertions are on
the order of events and on the engine's counters, never on time.
"""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from inference.engine import EmbeddingResult, Finished, LlamaEngine, SamplingParams, TextDelta
from inference.engine.scheduler import fair_pick
from inference.registry import spec_for
from tests.helpers import no_eos

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_engine(gemma):
    """A private engine: 512-token batches (one long input per embedding batch), 2 sequences."""
    spec = dataclasses.replace(spec_for(gemma), n_ctx=512, n_batch=512, n_parallel=2)
    engine = LlamaEngine(spec)
    assert engine.wait_ready(60)
    yield engine
    engine.close()


def long_inputs(engine, n: int) -> list[list[int]]:
    """n inputs of about 300 tokens: two never share a 512-token batch."""
    inputs = []
    for i in range(n):
        text = f"Document {i}: " + " ".join(f"line {i}-{j} of the harbour log." for j in range(40))
        inputs.append(engine.tokenize(text)[:300])
    assert all(len(tokens) == 300 for tokens in inputs)
    return inputs


def record(log: list[str], lock: threading.Lock, name: str, method):
    def wrapper(*args, **kwargs):
        with lock:
            log.append(name)
        return method(*args, **kwargs)

    return wrapper


def test_a_generation_keeps_receiving_tokens_while_a_long_embeddings_request_runs(
    small_engine, monkeypatch
):
    engine = small_engine
    inputs = long_inputs(engine, 12)
    alone = next(iter(engine.submit_embeddings(inputs[:2]))).vectors
    # In the engine thread's own order: each embedding batch and each token.
    log: list[str] = []
    lock = threading.Lock()
    monkeypatch.setattr(engine._embedder, "run", record(log, lock, "batch", engine._embedder.run))
    params = SamplingParams(max_tokens=400, temperature=0, logit_bias=no_eos(engine))
    stream = engine.submit(engine.tokenize("Tell me about the sea."), params)
    stream.emit = record(log, lock, "token", stream.emit)
    events = iter(stream)
    assert isinstance(next(events), TextDelta)  # the stream is decoding

    result = next(iter(engine.submit_embeddings(inputs)))

    with lock:
        order = list(log)
    stream.cancel()
    assert isinstance(list(events)[-1], Finished)
    assert isinstance(result, EmbeddingResult) and len(result.vectors) == 12
    first, last = order.index("batch"), len(order) - 1 - order[::-1].index("batch")
    assert order.count("batch") == 12
    # Not the whole request ahead of the stream: its tokens went out between batches.
    assert order[first:last].count("token") >= 8
    # Batching with decode steps changes no vector.
    for got, expected in zip(result.vectors[:2], alone, strict=True):
        assert float(np.dot(got, expected)) == pytest.approx(1.0, abs=1e-4)
    assert result.prompt_tokens == 12 * 300


def test_a_cancelled_embeddings_request_stops_at_the_next_batch(small_engine, monkeypatch):
    engine = small_engine
    inputs = long_inputs(engine, 10)
    before = engine.stats()
    handle = None
    calls = 0
    run = engine._embedder.run

    def run_then_cancel(batch):
        nonlocal calls
        calls += 1
        if calls == 2:
            handle.cancel()  # part-way: after the second of ten batches
        return run(batch)

    monkeypatch.setattr(engine._embedder, "run", run_then_cancel)
    handle = engine.submit_embeddings(inputs)
    (event,) = list(handle)

    assert isinstance(event, Finished) and event.finish_reason == "cancelled"
    after = engine.stats()
    assert after["embedding_batches"] - before["embedding_batches"] == 2
    assert after["embedding_jobs_cancelled"] - before["embedding_jobs_cancelled"] == 1
    assert after["embedding_jobs_active"] == 0
    # The engine goes on serving embeddings.
    (again,) = list(engine.submit_embeddings(inputs[:1]))
    assert isinstance(again, EmbeddingResult)


def test_owner_load_counts_queued_and_running_jobs_until_they_end(small_engine):
    engine = small_engine
    params = SamplingParams(max_tokens=400, temperature=0, logit_bias=no_eos(engine))
    tokens = engine.tokenize("Tell me about the sky.")
    # Two sequences: two of acme's jobs run, the third and globex's queue.
    acme = [engine.submit(tokens, params, owner="acme") for _ in range(3)]
    globex = engine.submit(tokens, params, owner="globex")
    unowned = engine.submit(tokens, params)
    assert engine.owner_load("acme") == 3
    assert engine.owner_load("globex") == 1
    assert engine.owner_load("initech") == 0
    embeddings = engine.submit_embeddings([tokens], owner="globex")
    assert engine.owner_load("globex") in (1, 2)  # 1 once the embeddings are done
    assert isinstance(next(iter(embeddings)), EmbeddingResult)
    assert engine.owner_load("globex") == 1

    for handle in (*acme, globex, unowned):
        handle.cancel()
        assert isinstance(list(handle)[-1], Finished)
    assert engine.owner_load("acme") == 0 and engine.owner_load("globex") == 0


def test_a_cancelled_embeddings_request_leaves_its_owners_count(small_engine):
    engine = small_engine
    handle = engine.submit_embeddings(long_inputs(engine, 4), owner="acme")
    handle.cancel()
    list(handle)
    assert engine.owner_load("acme") == 0


# -- fair_pick: which waiting jobs get free sequences --------------------------------------
def jobs(*owners):
    return [SimpleNamespace(owner=owner, name=f"{owner}{i}") for i, owner in enumerate(owners)]


def names(picked):
    return [job.name for job in picked]


def test_a_burst_from_one_owner_does_not_take_every_free_sequence():
    waiting = jobs("a", "a", "a", "a", "b", "c")
    assert names(fair_pick(waiting, [], 3)) == ["a0", "b4", "c5"]


def test_the_owner_running_the_fewest_goes_first():
    waiting = jobs("a", "b", "b")
    # a already runs two sequences, b none: b gets both free ones.
    assert names(fair_pick(waiting, ["a", "a"], 2)) == ["b1", "b2"]
    assert names(fair_pick(waiting, ["a", "a", "b", "b", "b"], 1)) == ["a0"]


def test_equal_owners_are_served_in_queue_order():
    waiting = jobs("b", "a", "b", "a")
    assert names(fair_pick(waiting, [], 2)) == ["b0", "a1"]
    assert names(fair_pick(waiting, [], 1)) == ["b0"]


def test_jobs_without_an_owner_share_one_turn():
    waiting = jobs(None, None, None, "a")
    assert names(fair_pick(waiting, [], 2)) == ["None0", "a3"]


def test_room_for_everyone_takes_the_whole_queue_and_none_takes_nothing():
    waiting = jobs("a", "a", "b")
    assert names(fair_pick(waiting, [], 5)) == ["a0", "a1", "b2"]
    assert fair_pick(waiting, [], 0) == []
