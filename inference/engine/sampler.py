"""One sequence's sampling state: numpy argmax for plain greedy, a llama.cpp chain otherwise."""

from __future__ import annotations

import ctypes
import math
import random

import numpy as np

from inference.engine.errors import GrammarError
from inference.engine.gbnf import check_grammar
from inference.engine.spec import SamplingParams


class Sampler:
    """One sequence's sampling state.

    Plain greedy decoding (with or without logit_bias) takes the argmax in numpy;
    anything else runs a llama.cpp sampler chain over the same logits row.
    """

    def __init__(self, params: SamplingParams, *, vocab, n_vocab: int, n_ctx: int) -> None:
        from llama_cpp import llama_cpp

        self._lib = llama_cpp
        self._n_vocab = n_vocab
        self._vocab = vocab
        self._n_ctx = n_ctx
        self._seed: int | None = None
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        bias = {int(t): float(b) for t, b in (params.logit_bias or {}).items()}
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._bias_set = frozenset(bias)
        self.chain = None
        # JSON mode: a chain without the grammar samples first and the grammar
        # only checks the chosen token; the grammar runs over the whole
        # vocabulary only when it refuses that token (as llama.cpp's own
        # samplers do). Penalty state cannot be rewound, so not with penalties.
        self.grammar = None
        self.fast = None
        self.grammar_full_passes = 0  # tokens for which the grammar ran over the vocabulary
        if params.grammar:
            check_grammar(params.grammar)  # before llama.cpp's recursive parser sees it
        penalties = params.presence_penalty != 0 or params.frequency_penalty != 0
        if params.temperature <= 0 and not params.grammar and not penalties:
            return
        self.chain = self._chain(params, bias, penalties=penalties, grammar=params.grammar)
        if params.grammar and not penalties:
            self.fast = self._chain(params, bias, penalties=False, grammar=None)

    def _chain(self, params: SamplingParams, bias: dict, *, penalties: bool, grammar: str | None):
        from llama_cpp import llama_cpp as lib

        engine_vocab, n_ctx = self._vocab, self._n_ctx
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if bias:
            entries = (lib.llama_logit_bias * len(bias))(
                *(lib.llama_logit_bias(t, b) for t, b in bias.items())
            )
            lib.llama_sampler_chain_add(
                chain, lib.llama_sampler_init_logit_bias(self._n_vocab, len(bias), entries)
            )
        if penalties:
            lib.llama_sampler_chain_add(
                chain,
                # The binding declares a leading n_vocab that llama.cpp no longer
                # takes; ints and floats travel in separate registers, so the C
                # side reads the first int as penalty_last_n: pass it twice.
                lib.llama_sampler_init_penalties(
                    n_ctx, n_ctx, 1.0, params.frequency_penalty, params.presence_penalty
                ),
            )
        if grammar:
            sampler = lib.llama_sampler_init_grammar(engine_vocab, grammar.encode("utf-8"), b"root")
            if not sampler:
                lib.llama_sampler_free(chain)
                self.close()
                raise GrammarError("llama.cpp could not parse the grammar")
            lib.llama_sampler_chain_add(chain, sampler)
            self.grammar = sampler  # owned by the chain
        if params.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if self._seed is None:
            self._seed = params.seed if params.seed is not None else random.getrandbits(32)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
        if params.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(self._seed & 0xFFFFFFFF))
        return chain

    def sample(self, ctx, row: int, stored: np.ndarray | None = None) -> int:
        """The next token from batch row `row`, or from a stored logits row."""
        if self.fast is not None:
            token = self._run_chain(self.fast, ctx, row, stored)
            if self._grammar_allows(token):
                self._lib.llama_sampler_accept(self.grammar, token)
                return token
        if self.chain is not None:
            self.grammar_full_passes += self.grammar is not None
            return self._run_chain(self.chain, ctx, row, stored)
        logits = logits_row(ctx, row, self._n_vocab) if stored is None else stored
        if not len(self._bias_ids):
            return int(logits.argmax())
        best = int(logits.argmax())
        biased = logits[self._bias_ids] + self._bias_values
        if best not in self._bias_set:
            # Only a biased token can overtake the unbiased winner.
            top = int(biased.argmax())
            return int(self._bias_ids[top]) if biased[top] > logits[best] else best
        logits = logits.copy()  # the winner itself is biased: rank everything again
        logits[self._bias_ids] = biased
        return int(logits.argmax())

    def _run_chain(self, chain, ctx, row: int, stored: np.ndarray | None) -> int:
        if stored is None:
            return self._lib.llama_sampler_sample(chain, ctx, row)
        return self._sample_stored(chain, stored)

    def _sample_stored(self, chain, logits: np.ndarray) -> int:
        """What llama_sampler_sample does, over a logits row kept from an earlier step."""
        lib = self._lib
        candidates = np.empty(self._n_vocab, dtype=TOKEN_DATA)
        candidates["id"] = np.arange(self._n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = lib.llama_token_data_array(
            candidates.ctypes.data_as(lib.llama_token_data_p), self._n_vocab, -1, False
        )
        lib.llama_sampler_apply(chain, ctypes.byref(array))
        token = int(candidates["id"][array.selected])
        lib.llama_sampler_accept(chain, token)
        return token

    def _grammar_allows(self, token: int) -> bool:
        lib = self._lib
        self._one[0].id = token
        self._one[0].logit = 0.0
        self._one_array.size = 1
        self._one_array.selected = -1
        lib.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
        return self._one[0].logit != -math.inf

    def close(self) -> None:
        for name in ("fast", "chain"):
            chain = getattr(self, name)
            if chain is not None:
                self._lib.llama_sampler_free(chain)
                setattr(self, name, None)
        self.grammar = None


# llama_token_data, as numpy lays it out: a candidates array without a Python loop.
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def logits_row(ctx, row: int, n_vocab: int):
    from llama_cpp import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,))
