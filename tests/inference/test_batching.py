"""Continuous batching against the real model: isolation, lifecycle, leaks, prefix cache, JSON.

Assertions are on text, usage and the engine's own counters (stats()), never on time.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from inference.engine import Finished, LlamaEngine, SamplingParams, TextDelta
from inference.registry import registry, spec_for
from inference.services import _tokenize_chat
from tests.helpers import no_eos

pytestmark = pytest.mark.django_db

WORDS = ["banana", "rocket", "violin", "tiger", "castle", "pepper", "window", "dragon"]


@pytest.fixture
def engine(gemma):
    engine = registry.engine_for(gemma)
    assert engine.wait_ready(60)
    return engine


@pytest.fixture
def small_engine(gemma):
    """A private engine with two sequences, so that a third request has to wait."""
    spec = dataclasses.replace(spec_for(gemma), n_ctx=512, n_batch=512, n_parallel=2)
    engine = LlamaEngine(spec)
    assert engine.wait_ready(60)
    yield engine
    engine.close()


def collect(handle):
    text, finished = "", None
    for event in handle:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            finished = event
    return text, finished


def word_prompt(word: str) -> str:
    return f"My favourite word is {word}. I say {word}, {word}, {word},"


def assert_idle(engine):
    stats = engine.stats()
    assert stats["queue_depth"] == 0 and stats["in_flight"] == 0
    assert stats["active_sequences"] == 0 and stats["kv_cells_active"] == 0
    # llama.cpp's own view of the cells agrees with the engine's books: only
    # prefix cache entries hold any.
    assert stats["kv_cells_used"] == stats["kv_cells_cached"]
    assert stats["prefix_cache_entries"] <= stats["n_parallel"]


def test_eight_concurrent_greedy_requests_each_continue_their_own_prompt(engine):
    params = SamplingParams(max_tokens=12, temperature=0)
    prompts = [engine.tokenize(word_prompt(word)) for word in WORDS]
    alone = [collect(engine.submit(tokens, params))[0] for tokens in prompts]

    handles = [engine.submit(tokens, params) for tokens in prompts]
    results = [collect(handle) for handle in handles]

    for word, tokens, solo, (text, finished) in zip(WORDS, prompts, alone, results):
        assert word in text
        assert not any(other in text for other in WORDS if other != word), text
        # A request's text depends on its own prompt only, not on its neighbours.
        assert text == solo
        assert finished.finish_reason == "length"
        assert finished.prompt_tokens == len(tokens)
        assert finished.completion_tokens == 12
    assert_idle(engine)


def test_sequences_that_outlive_their_neighbours_keep_their_own_text(engine):
    # Every other request ends early. The engine keeps the survivors on
    # consecutive sequence ids (one llama.cpp pass per step) by moving their
    # KV cells into the freed slots; the move must not change what they say.
    bias = no_eos(engine)
    lengths = [3, 16, 5, 16, 2, 16, 7, 16]
    jobs = [
        (engine.tokenize(word_prompt(word)), SamplingParams(n, 0, logit_bias=bias))
        for word, n in zip(WORDS, lengths)
    ]
    alone = [collect(engine.submit(tokens, params))[0] for tokens, params in jobs]
    moved = engine.stats()["sequences_moved"]

    handles = [engine.submit(tokens, params) for tokens, params in jobs]
    results = [collect(handle) for handle in handles]

    assert [text for text, _ in results] == alone
    assert [f.completion_tokens for _, f in results] == [p.max_tokens for _, p in jobs]
    assert engine.stats()["sequences_moved"] > moved
    assert_idle(engine)


def test_usage_counts_every_streamed_token_under_concurrency(engine):
    handles = [
        engine.submit(engine.tokenize(word_prompt(word)), SamplingParams(max_tokens=n + 1))
        for n, word in enumerate(WORDS)
    ]
    for n, handle in enumerate(handles):
        events = list(handle)
        finished = events[-1]
        streamed = sum(e.n_tokens for e in events if isinstance(e, TextDelta))
        assert streamed == finished.completion_tokens
        assert finished.completion_tokens <= n + 1


def test_cancel_mid_stream_frees_the_sequence_for_the_next_request(small_engine):
    engine = small_engine
    bias = no_eos(engine)
    long = SamplingParams(max_tokens=400, temperature=0, logit_bias=bias)
    first = engine.submit(engine.tokenize("Tell me about the sea."), long)
    second = engine.submit(engine.tokenize("Tell me about the sky."), long)
    waiting = engine.submit(engine.tokenize(word_prompt("castle")), SamplingParams(max_tokens=3))

    events = iter(first)
    assert isinstance(next(events), TextDelta)
    assert not waiting.started.is_set()  # both sequences are taken
    first.cancel()
    finished = [e for e in events if isinstance(e, Finished)]
    assert finished[0].finish_reason == "cancelled"

    # The freed sequence goes to the waiting request, which finishes while the
    # second long stream is still running.
    _, done = collect(waiting)
    assert done.completion_tokens == 3
    assert engine.stats()["active_sequences"] == 1
    second.cancel()
    assert collect(second)[1].finish_reason == "cancelled"
    assert_idle(engine)


def test_a_failed_cell_copy_costs_only_speed(small_engine, monkeypatch):
    # Copies of cells (prefix cache, n>1, moves) go through llama.cpp's sequence
    # state; should one fail, the sequence evaluates its prompt itself.
    engine = small_engine
    tokens = engine.tokenize(word_prompt("anchor"))
    params = SamplingParams(max_tokens=6, temperature=0)
    expected, _ = collect(engine.submit(tokens, params))
    monkeypatch.setattr(engine, "_copy_seq", lambda src, dst: False)
    before = engine.stats()

    again = [engine.submit(tokens, params) for _ in range(3)]  # one waits: 2 sequences
    results = [collect(handle) for handle in again]

    assert [text for text, _ in results] == [expected] * 3
    assert all(f.completion_tokens == 6 for _, f in results)
    after = engine.stats()
    assert after["prefix_cache_hits"] == before["prefix_cache_hits"]
    assert after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"] == 3 * len(tokens)
    assert after["kv_cells_active"] == 0 and after["active_sequences"] == 0


def test_no_cells_or_sequences_leak_after_500_mixed_requests(small_engine):
    engine = small_engine
    rng = random.Random(7)
    prompts = [engine.tokenize(word_prompt(word)) for word in WORDS]
    prompts += [engine.tokenize(f"Question {i}: what is {i} plus {i}?") for i in range(8)]
    handles = []
    for i in range(500):
        tokens = rng.choice(prompts)
        params = SamplingParams(
            max_tokens=rng.randint(1, 4),
            temperature=rng.choice([0, 0.7]),
            seed=i,
            stop=(",",) if i % 5 == 0 else (),
            logprobs=1 if i % 7 == 0 else None,
        )
        handle = engine.submit(tokens, params)
        if i % 4 == 0:
            handle.cancel()  # some before they start, some while they run
        handles.append(handle)
        if i % 25 == 24:
            for h in handles:
                collect(h)
            handles = []
    for h in handles:
        collect(h)
    assert_idle(engine)


def test_a_shared_prefix_is_evaluated_once(engine):
    system = (
        "You are the lighthouse keeper's assistant. Answer in one short sentence, "
        "politely, and never mention the weather unless you are asked about it. "
    )
    first = engine.tokenize(system + "What colour is the lighthouse?")
    second = engine.tokenize(system + "How tall is the tower?")
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert shared > 20
    params = SamplingParams(max_tokens=4, temperature=0)

    collect(engine.submit(first, params))
    before = engine.stats()
    _, finished = collect(engine.submit(second, params))
    after = engine.stats()

    assert finished.prompt_tokens == len(second)  # usage counts the whole prompt
    assert after["prefix_cache_hits"] == before["prefix_cache_hits"] + 1
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated <= len(second) - shared + 1
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] >= shared - 1


def test_a_short_shared_template_is_reused_too(engine):
    # Prompts from one template share only their first few words; copying a
    # short cached sequence costs less than evaluating even those.
    first = engine.tokenize("Write a long story about a lighthouse keeper.")
    second = engine.tokenize("Write a long story about a wolf.")
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert 2 <= shared < 8
    params = SamplingParams(max_tokens=8, temperature=0)

    collect(engine.submit(first, params))
    before = engine.stats()
    collect(engine.submit(second, params))
    after = engine.stats()

    assert after["prefix_cache_hits"] == before["prefix_cache_hits"] + 1
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated <= len(second) - shared


def test_a_chat_that_grows_turn_by_turn_reuses_the_previous_turn(engine):
    messages = [{"role": "user", "content": "Name a colour of the rainbow."}]
    params = SamplingParams(max_tokens=6, temperature=0)
    answer, _ = collect(engine.submit(_tokenize_chat(engine, "gemma", messages), params))
    messages += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And another one?"},
    ]
    prompt = _tokenize_chat(engine, "gemma", messages)
    before = engine.stats()
    collect(engine.submit(prompt, params))
    after = engine.stats()
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated < len(prompt) // 2


def test_repeated_prompt_gives_the_same_greedy_text_from_the_cache(engine):
    tokens = engine.tokenize(word_prompt("lantern") + " and then I say")
    params = SamplingParams(max_tokens=10, temperature=0)
    first, _ = collect(engine.submit(tokens, params))
    before = engine.stats()
    second, finished = collect(engine.submit(tokens, params))
    after = engine.stats()
    assert after["prefix_cache_hits"] == before["prefix_cache_hits"] + 1
    assert first == second
    assert finished.prompt_tokens == len(tokens)
    # Every prompt cell came from the cache, and the first token from the
    # logits kept with it: not one prompt token was evaluated again.
    assert after["prompt_tokens_evaluated"] == before["prompt_tokens_evaluated"]
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] == len(tokens)


def test_a_repeated_prompt_samples_the_same_way_from_the_kept_logits(engine):
    # Temperature, top_p, a seed, a bias and log probabilities: the sampler
    # chain runs over the kept logits exactly as over a fresh batch row.
    tokens = engine.tokenize(word_prompt("compass") + " and the sea")
    params = SamplingParams(
        max_tokens=6, temperature=0.9, top_p=0.95, seed=7, logprobs=2, logit_bias=no_eos(engine)
    )

    def run():
        deltas = [e for e in engine.submit(tokens, params) if isinstance(e, TextDelta)]
        text = "".join(d.text for d in deltas)
        return text, [(lp.token, lp.logprob) for d in deltas for lp in d.logprobs]

    first_text, first_logprobs = run()
    before = engine.stats()
    second_text, second_logprobs = run()
    after = engine.stats()
    assert after["prompt_tokens_evaluated"] == before["prompt_tokens_evaluated"]
    assert second_text == first_text
    assert second_logprobs == first_logprobs
    assert len(first_logprobs) == 6


def test_a_new_prompt_gets_its_first_token_from_one_decode(engine):
    tokens = engine.tokenize(word_prompt("meadow") + " in the morning")
    before = engine.stats()
    text, finished = collect(engine.submit(tokens, SamplingParams(max_tokens=1, temperature=0)))
    after = engine.stats()
    assert finished.completion_tokens == 1 and text
    # The prompt, its last token included, is evaluated in one llama_decode
    # (what the template shares with earlier prompts comes from the cache).
    assert after["decode_steps"] - before["decode_steps"] == 1
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    reused = after["prompt_tokens_reused"] - before["prompt_tokens_reused"]
    assert evaluated + reused == len(tokens) and evaluated > 1


def test_n_choices_share_the_prompt_cells(engine):
    tokens = engine.tokenize(word_prompt("harbour") + " the boats")
    before = engine.stats()
    handles = [
        engine.submit(tokens, SamplingParams(max_tokens=4, temperature=0.9, seed=s))
        for s in range(3)
    ]
    results = [collect(h) for h in handles]
    after = engine.stats()
    assert all(finished.prompt_tokens == len(tokens) for _, finished in results)
    # The prompt was evaluated at most once; the other choices copied its cells.
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated <= len(tokens)
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] >= 2 * len(tokens)

    # Asked again, the three choices copy the cached prompt and its logits:
    # nothing is evaluated, and the seeds give the same three answers.
    texts = [text for text, _ in results]
    again = [
        engine.submit(tokens, SamplingParams(max_tokens=4, temperature=0.9, seed=s))
        for s in range(3)
    ]
    assert [collect(h)[0] for h in again] == texts
    assert engine.stats()["prompt_tokens_evaluated"] == after["prompt_tokens_evaluated"]


def test_json_mode_in_one_sequence_while_others_run_free_form(engine):
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    # A schema that bounds the object, so that its end does not hang on how
    # soon a small base model chooses to close an open-ended one.
    schema = {
        "type": "object",
        "properties": {
            "animal": {"enum": ["cat", "dog", "horse"]},
            "legs": {"enum": [2, 4, 6]},
        },
        "required": ["animal", "legs"],
    }
    # (Not test_chat's prompt: a cache entry from here must not feed that test.)
    content = "Which animal barks, and how many legs has it? Answer as JSON."
    json_prompt = _tokenize_chat(engine, "gemma", [{"role": "user", "content": content}])
    bias = no_eos(engine)
    free = [
        engine.submit(
            engine.tokenize(word_prompt(word)),
            SamplingParams(max_tokens=40, temperature=0, logit_bias=bias),
        )
        for word in WORDS[:3]
    ]
    structured = engine.submit(
        json_prompt,
        SamplingParams(
            max_tokens=300,
            temperature=0,
            frequency_penalty=1.0,
            grammar=json_schema_to_gbnf(json.dumps(schema)),
        ),
    )
    text, finished = collect(structured)
    assert finished.finish_reason == "stop"
    answer = json.loads(text)
    assert answer["animal"] in ("cat", "dog", "horse") and answer["legs"] in (2, 4, 6)
    for word, handle in zip(WORDS, free):
        free_text, done = collect(handle)
        assert word in free_text and done.completion_tokens == 40
        with pytest.raises(json.JSONDecodeError):
            json.loads(free_text)
    assert_idle(engine)


def test_json_mode_runs_the_grammar_over_the_vocabulary_only_when_it_refuses_a_token(engine):
    # The token sampled without the grammar is checked against it; only a
    # refused token costs a pass of the grammar over all 262k candidates.
    from llama_cpp.llama_grammar import JSON_GBNF

    content = "Describe a cat in JSON."
    prompt = _tokenize_chat(engine, "gemma", [{"role": "user", "content": content}])
    before = engine.stats()["grammar_full_passes"]
    text, finished = collect(
        engine.submit(prompt, SamplingParams(max_tokens=24, temperature=0, grammar=JSON_GBNF))
    )
    passes = engine.stats()["grammar_full_passes"] - before
    assert text.lstrip().startswith("{")
    assert finished.completion_tokens > 10
    assert passes < finished.completion_tokens / 2


def test_concurrent_embedding_requests_match_one_at_a_time(engine):
    texts = ["The quick brown fox", "A lighthouse on the cliff", "Fresh bread"]
    alone = []
    for text in texts:
        (result,) = [e for e in engine.submit_embeddings([engine.tokenize(text)])]
        alone.append(result.vectors[0])
    handles = [engine.submit_embeddings([engine.tokenize(text)]) for text in texts]
    together = [list(handle)[-1].vectors[0] for handle in handles]
    for a, b in zip(alone, together):
        assert sum(x * y for x, y in zip(a, b)) == pytest.approx(1.0, abs=1e-4)
