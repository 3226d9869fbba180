"""A lazy grammar in the sampler, over Qwen's real vocabulary: free text until a
trigger, then the rest held to the grammar.

Each step hands the sampler a logits row that ranks one token first: greedy
sampling picks it unless the grammar refuses it.
"""

from __future__ import annotations

import ctypes
import json

import llama_cpp.llama_cpp as lib
import numpy as np
import pytest

from inference.engine import SamplingParams
from inference.engine.sampler import _TRIGGER_TRIES, Sampler
from inference.registry import resolve_path
from inference.tools import auto_grammar, tool_specs

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
LAZY = auto_grammar(tool_specs([WEATHER]), "auto")

pytestmark = pytest.mark.django_db


@pytest.fixture
def vocab(qwen):
    """The default chat model's vocabulary (its GGUF loaded without weights)."""
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(resolve_path(qwen.path)).encode(), params)
    assert model
    yield lib.llama_model_get_vocab(model)
    lib.llama_model_free(model)


def tokens(vocab, text: str) -> list[int]:
    out = (lib.llama_token * 256)()
    n = lib.llama_tokenize(vocab, text.encode(), len(text.encode()), out, 256, False, True)
    assert n > 0
    return list(out[:n])


class Driver:
    """A greedy lazy-grammar sampler fed rows that each rank chosen tokens first."""

    def __init__(self, vocab, **params) -> None:
        self.vocab = vocab
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        sampling = SamplingParams(
            max_tokens=64,
            temperature=0,
            grammar=LAZY.grammar,
            trigger_words=LAZY.trigger_words,
            trigger_patterns=LAZY.trigger_patterns,
            **params,
        )
        self.sampler = Sampler(sampling, vocab=vocab, n_vocab=self.n_vocab, n_ctx=512)
        self.text = b""

    def step(self, *ranked: int) -> int:
        """The token sampled from a row ranking `ranked` first, in that order."""
        logits = np.full(self.n_vocab, -1000.0, dtype=np.float32)
        for rank, token in enumerate(ranked):
            logits[token] = 100.0 - rank
        token = self.sampler.sample(None, 0, logits)
        self.text += piece(self.vocab, token)
        return token

    def write(self, text: str) -> None:
        for token in tokens(self.vocab, text):
            assert self.step(token) == token, self.text


def piece(vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = lib.llama_token_to_piece(vocab, token, buf, 64, 0, True)
    return buf.raw[:n]


@pytest.mark.parametrize("penalties", [False, True], ids=["fast-check", "full-chain"])
def test_text_is_free_until_the_tag_then_the_call_is_held_to_its_schema(vocab, penalties):
    params = {"presence_penalty": 0.5} if penalties else {}
    lazy = Driver(vocab, **params)
    (hello,) = tokens(vocab, "Hello")
    # Before the trigger any token goes, even text that is no call at all.
    lazy.write("Let me check that. Hello")
    assert lazy.step(hello) == hello
    assert not lazy.sampler.triggered
    (tag,) = tokens(vocab, "<tool_call>")  # one special token in Qwen's vocabulary
    assert lazy.step(tag) == tag
    assert lazy.sampler.triggered
    # Now `Hello` breaks the call: the grammar's choice among the rest wins.
    (newline,) = tokens(vocab, "\n")
    assert lazy.step(hello, newline) == newline
    (brace,) = tokens(vocab, '{"')
    assert lazy.step(hello, brace) == brace
    lazy.write('name": "get_weather", "arguments": {"')
    # A property the schema does not have is refused; `city` is not.
    (city, *_) = tokens(vocab, "city")
    bad = tokens(vocab, "country")[0]
    assert lazy.step(bad, city) == city
    lazy.write('": "Paris"}}\n</tool_call>')
    # The call is complete: only its end may follow, not more text.
    end = lib.llama_vocab_eos(vocab)
    assert lazy.step(hello, end) == end
    text = lazy.text.decode()
    assert text.startswith("Let me check that. HelloHello<tool_call>\n")
    call = json.loads(text.split("<tool_call>\n")[1].split("\n</tool_call>")[0])
    assert call == {"name": "get_weather", "arguments": {"city": "Paris"}}
    lazy.sampler.close()


def test_a_bare_call_opening_the_reply_triggers_and_a_refused_replay_is_not_sampled(vocab):
    lazy = Driver(vocab)
    lazy.write('{"name": "get_weather')
    assert not lazy.sampler.triggered
    # `"}` would fire the trigger with a call that has no arguments: the
    # grammar would refuse that replay, so the next-ranked token is taken.
    (closed,) = tokens(vocab, '"}')
    (comma,) = tokens(vocab, '",')
    assert lazy.step(closed, comma) == comma
    assert lazy.sampler.triggered
    (hello,) = tokens(vocab, "Hello")
    (space,) = tokens(vocab, ' "')
    assert lazy.step(hello, space) == space
    lazy.sampler.close()


def test_a_call_after_text_without_the_tag_does_not_trigger(vocab):
    lazy = Driver(vocab)
    # The bare form counts only where it opens the reply (the pattern is ^...$).
    lazy.write('Sure: {"name": "get_weather", "arguments": {}} Hello')
    assert not lazy.sampler.triggered
    lazy.sampler.close()


def test_a_reply_that_keeps_firing_refused_replays_goes_on_without_the_grammar(vocab):
    lazy = Driver(vocab)
    lazy.write('{"name": "get_weather')
    # Every one of these closes the name and fires the trigger with text the
    # grammar refuses; past _TRIGGER_TRIES of them the grammar is dropped.
    refused = [
        ids[0]
        for ids in (tokens(vocab, '"' + c) for c in "}])>;.?!/'%$#=-+*&|^~`@")
        if len(ids) == 1
    ]
    assert len(refused) > _TRIGGER_TRIES
    assert lazy.step(*refused) == refused[0]
    assert lazy.sampler.lazy and not lazy.sampler.triggered
    (hello,) = tokens(vocab, "Hello")
    assert lazy.step(hello) == hello  # free from here on
    lazy.sampler.close()
