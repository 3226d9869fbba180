"""The engine against the real model: no cut-off streams, fast cancellation, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from pathlib import Path

import pytest

from inference.engine import Finished, LlamaEngine, SamplingParams, TextDelta, _split_stop
from inference.registry import registry, spec_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(gemma):
    engine = registry.engine_for(gemma)
    assert engine.wait_ready(60)
    return engine


def collect(handle):
    text, finished = "", None
    for event in handle:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            finished = event
    return text, finished


def test_a_running_stream_is_not_cut_off_by_a_second_request(engine):
    tokens = engine.tokenize("Write a long story about a dragon.")
    params = SamplingParams(max_tokens=24, temperature=0)
    alone, _ = collect(engine.submit(tokens, params))

    first = engine.submit(tokens, params)
    first_events = iter(first)
    next(first_events)  # the first stream is running
    second = engine.submit(engine.tokenize("Hello"), SamplingParams(max_tokens=4, temperature=0))
    rest = "".join(e.text for e in first_events if isinstance(e, TextDelta))
    _, second_done = collect(second)
    assert second_done.completion_tokens >= 1
    # The first stream ran to its own end, unchanged by the request queued behind it.
    assert alone.endswith(rest) and len(rest) > 0


def test_cancel_leaves_within_one_decode_step_and_frees_the_engine(engine):
    tokens = engine.tokenize("Tell me everything about the ocean.")
    handle = engine.submit(tokens, SamplingParams(max_tokens=500, temperature=0))
    events = iter(handle)
    seen = 0
    for event in events:
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                handle.cancel()
        if isinstance(event, Finished):
            finished = event
            break
    assert finished.finish_reason == "cancelled"
    # At most one more token is decoded after cancel() (the one in flight).
    assert finished.completion_tokens <= 4 + 1
    assert engine.in_flight == 0 and engine.queue_depth == 0
    _, after = collect(engine.submit(engine.tokenize("Hi"), SamplingParams(max_tokens=2)))
    assert after.completion_tokens >= 1


def test_concurrent_jobs_all_finish_and_leave_no_sequence_behind(engine):
    handles = [
        engine.submit(engine.tokenize(f"Number {i}"), SamplingParams(max_tokens=3))
        for i in range(5)
    ]
    results = [collect(h)[1] for h in handles]
    assert all(r.completion_tokens >= 1 for r in results)
    stats = engine.stats()
    assert stats["active_sequences"] == 0 and stats["kv_cells_active"] == 0


async def test_async_iteration_receives_tokens_before_the_end(engine):
    handle = engine.submit(
        engine.tokenize("Once upon a time"), SamplingParams(max_tokens=16, temperature=0)
    )
    first_at = None
    n = 0
    async for event in handle:
        if isinstance(event, TextDelta) and first_at is None:
            first_at = n
        n += 1
    assert first_at == 0 and n > 2


async def test_cancelled_async_consumer_frees_the_engine(engine):
    handle = engine.submit(
        engine.tokenize("Tell me a long story."), SamplingParams(max_tokens=400, temperature=0)
    )
    got_token = asyncio.Event()

    async def consume():
        async for event in handle:
            if isinstance(event, TextDelta):
                got_token.set()

    task = asyncio.create_task(consume())
    await got_token.wait()
    task.cancel()
    handle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The engine answers the cancelled job with its end, well before max_tokens...
    finished = [event async for event in handle if isinstance(event, Finished)]
    assert finished[0].finish_reason == "cancelled"
    assert finished[0].completion_tokens < 400
    # ...and serves the next job.
    after = [
        event
        async for event in engine.submit(engine.tokenize("Hi"), SamplingParams(max_tokens=2))
        if isinstance(event, Finished)
    ]
    assert after[0].completion_tokens >= 1


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("hello world", ("wor",), ("hello ", "", "wor")),
        ("hello wo", ("world",), ("hello ", "wo", None)),
        ("hello", ("x",), ("hello", "", None)),
        ("abc", (), ("abc", "", None)),
        # The stop string that begins first ends the text, and names itself.
        ("say hello world", ("world", "lo"), ("say hel", "", "lo")),
        ("abcd", ("abc", "ab"), ("", "", "ab")),
    ],
)
def test_split_stop(text, stops, expected):
    assert _split_stop(text, stops) == expected


def stop_inside(text: str) -> str:
    """A few characters from the middle of `text`, found nowhere earlier in it."""
    for start in range(len(text) // 2, len(text) - 2):
        stop = text[start : start + 3]
        if stop.strip() and text.find(stop) > 0:
            return stop
    raise AssertionError(f"no stop string to take from {text!r}")


def test_finished_names_the_stop_string_that_ended_the_text(engine):
    tokens = engine.tokenize("The numbers from one to twenty are")
    free, finished = collect(engine.submit(tokens, SamplingParams(max_tokens=24, temperature=0)))
    assert finished.finish_reason == "length" and finished.stop_sequence is None
    stop = stop_inside(free)
    params = SamplingParams(max_tokens=24, temperature=0, stop=("never-in-the-text", stop))
    text, finished = collect(engine.submit(tokens, params))
    assert finished.finish_reason == "stop"
    assert finished.stop_sequence == stop
    assert text == free[: free.find(stop)]


def test_close_finishes_queued_jobs_then_refuses_new_ones(gemma):
    from inference.engine import EngineClosed, LlamaEngine
    from inference.registry import spec_for

    engine = LlamaEngine(spec_for(gemma))
    assert engine.wait_ready(60)
    queued = [
        engine.submit(engine.tokenize("Hi"), SamplingParams(max_tokens=2, temperature=0))
        for _ in range(3)
    ]
    tokens = engine.tokenize("Hi")
    engine.close()
    assert [collect(h)[1].completion_tokens for h in queued] == [2, 2, 2]
    with pytest.raises(EngineClosed):
        engine.submit(tokens, SamplingParams(max_tokens=1))


def _threads_nice() -> dict[int, int]:
    """Every thread of this process: its id -> its nice value (Linux keeps one per thread)."""
    nice = {}
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            stat = Path(f"/proc/self/task/{task}/stat").read_text()
            # After the command's closing parenthesis: state is field 3, nice field 19.
            nice[int(task)] = int(stat.rsplit(")", 1)[1].split()[16])
    return nice


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice values: Linux")
def test_the_engine_and_its_compute_threads_run_at_the_configured_nice_value(gemma):
    """The engine thread and llama.cpp's compute threads (which it starts) yield
    to the threads that pass tokens on; the rest of the process keeps its priority."""
    before = _threads_nice()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    spec = dataclasses.replace(spec_for(gemma), n_ctx=256, n_parallel=1, n_threads=2, nice=3)
    engine = LlamaEngine(spec)
    try:
        assert engine.wait_ready(60)
        _, finished = collect(engine.submit([2, 651, 6037], SamplingParams(max_tokens=2)))
        assert finished is not None and finished.completion_tokens == 2
        started = {tid: n for tid, n in _threads_nice().items() if tid not in before}
        # The engine thread and, for two compute threads, at least one of OpenMP's.
        assert len(started) >= 2
        assert set(started.values()) == {min(19, base + 3)}
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # this thread is untouched
    finally:
        engine.close()
