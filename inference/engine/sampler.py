"""One sequence's sampling state: numpy argmax for plain greedy, a llama.cpp chain otherwise."""

from __future__ import annotations

import ctypes
import math
import random
import re

import numpy as np

from inference.engine.errors import GrammarError
from inference.engine.gbnf import check_grammar
from inference.engine.spec import SamplingParams


class Sampler:
    """One sequence's sampling state.

    Plain greedy decoding (with or without logit_bias) takes the argmax in numpy;
    anything else runs a llama.cpp sampler chain over the same logits row.

    A lazy grammar (params with trigger words or patterns) is llama.cpp's own
    (`llama_sampler_init_grammar_lazy_patterns`, as llama-server uses it): it
    masks nothing until a trigger fires, then llama.cpp replays the reply from
    the trigger into the grammar. A replay the grammar refuses throws a C++
    exception, which through ctypes aborts the process: until the trigger
    fires, each token is checked first (`_Triggers`, a copy of llama.cpp's
    trigger logic, and a probe grammar), and a token whose replay the grammar
    would refuse is not sampled.
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
        self._grammar_index = -1  # the grammar's place in self.chain
        self._triggers: _Triggers | None = None  # a lazy grammar, until it fires
        self._probe = None  # a lazy grammar's grammar, eager: checks what a trigger replays
        self._pieces: dict[int, bytes] = {}
        self._grammar_text = params.grammar or ""
        self.lazy = False
        self.triggered = False
        if params.grammar:
            check_grammar(params.grammar)  # before llama.cpp's recursive parser sees it
            if params.trigger_words or params.trigger_patterns:
                self.lazy = True
                self._triggers = self._lazy_triggers(params)
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
            if self._triggers is None:
                sampler = lib.llama_sampler_init_grammar(
                    engine_vocab, grammar.encode("utf-8"), b"root"
                )
            else:
                patterns = self._triggers.sources
                tokens = sorted(self._triggers.tokens)
                sampler = lib.llama_sampler_init_grammar_lazy_patterns(
                    engine_vocab,
                    grammar.encode("utf-8"),
                    b"root",
                    (ctypes.c_char_p * len(patterns))(*(p.encode("utf-8") for p in patterns)),
                    len(patterns),
                    (lib.llama_token * len(tokens))(*tokens),
                    len(tokens),
                )
            if not sampler:
                lib.llama_sampler_free(chain)
                self.close()
                raise GrammarError("llama.cpp could not parse the grammar")
            self._grammar_index = lib.llama_sampler_chain_n(chain)
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
        if self._triggers is not None:
            return self._sample_awaiting(ctx, row, stored)
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

    # -- a lazy grammar, before its trigger ------------------------------------------------
    def _lazy_triggers(self, params: SamplingParams) -> _Triggers:
        tokens: set[int] = set()
        patterns = list(params.trigger_patterns)
        for word in params.trigger_words:
            ids = self._tokenize(word.encode("utf-8"), special=True)
            if ids is not None and len(ids) == 1:
                tokens.add(ids[0])  # `<tool_call>` is one special token in Qwen's vocabulary
            # Its spelling in plain text fires too (llama-server's word triggers).
            patterns.append("(" + _WORD_SPECIALS.sub(r"\\\g<0>", word) + ")")
        try:
            return _Triggers(frozenset(tokens), tuple(patterns))
        except re.error as exc:
            raise GrammarError(f"bad grammar trigger pattern: {exc}") from exc

    def _sample_awaiting(self, ctx, row: int, stored: np.ndarray | None) -> int:
        """A token while a lazy grammar awaits its trigger: any token, unless the
        trigger it fires would replay text the grammar refuses."""
        lib, triggers = self._lib, self._triggers
        assert triggers is not None
        # The fast chain keeps no state that its accept changes (no penalties):
        # its own sample is the first try. The full chain (penalties) must not
        # accept a token before it is checked.
        chain = self.fast if self.fast is not None else self.chain
        token = self._run_chain(self.fast, ctx, row, stored) if self.fast is not None else -1
        masked: np.ndarray | None = None
        for _ in range(_TRIGGER_TRIES):
            if token < 0:
                if masked is None:
                    masked = self._logits_copy(ctx, row, stored)
                token = self._pick(chain, masked)
            piece = self._piece(token)
            replay = triggers.replay(token, piece)
            if replay is None or self._grammar_takes(replay):
                lib.llama_sampler_accept(self.grammar if chain is self.fast else chain, token)
                triggers.accept(token, piece, fired=replay is not None)
                if replay is not None:
                    self._triggers = None
                    self.triggered = True
                return token
            if masked is None:
                masked = self._logits_copy(ctx, row, stored)
            masked[token] = -math.inf
            token = -1
        # The reply keeps starting a call the grammar refuses: it goes on
        # unconstrained (and is parsed afterwards, as without a grammar).
        self._drop_grammar()
        return self.sample(ctx, row, stored)

    def _logits_copy(self, ctx, row: int, stored: np.ndarray | None) -> np.ndarray:
        # A copy to mask tokens in: the row may be llama.cpp's own logits buffer.
        return (logits_row(ctx, row, self._n_vocab) if stored is None else stored).copy()

    def _grammar_takes(self, replay: list[tuple[int, bytes]]) -> bool:
        """Whether the grammar accepts what a trigger replays, checked on a copy
        token by token (a refused token is masked, not accepted)."""
        lib = self._lib
        if self._probe is None:
            self._probe = lib.llama_sampler_init_grammar(
                self._vocab, self._grammar_text.encode("utf-8"), b"root"
            )
        probe = lib.llama_sampler_clone(self._probe)
        try:
            for token, text in replay:
                # The first token may replay only the tail of its piece.
                tokens = [token] if text == self._piece(token) else self._tokenize(text)
                if tokens is None:
                    return False
                for t in tokens:
                    if not self._allows(probe, t):
                        return False
                    lib.llama_sampler_accept(probe, t)
            return True
        finally:
            lib.llama_sampler_free(probe)

    def _drop_grammar(self) -> None:
        lib = self._lib
        lib.llama_sampler_free(lib.llama_sampler_chain_remove(self.chain, self._grammar_index))
        if self.fast is not None:
            lib.llama_sampler_free(self.fast)
            self.fast = None
        self.grammar = None
        self._triggers = None

    def _pick(self, chain, logits: np.ndarray) -> int:
        """The token `chain` chooses from a logits row, not yet accepted."""
        candidates, array = self._candidates(logits)
        self._lib.llama_sampler_apply(chain, ctypes.byref(array))
        return int(candidates["id"][array.selected])

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            lib = self._lib
            buf = ctypes.create_string_buffer(64)
            n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _tokenize(self, text: bytes, *, special: bool = False) -> list[int] | None:
        """`text` as tokens; None for text that is not whole UTF-8."""
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            return None
        lib = self._lib
        out = (lib.llama_token * (len(text) + 8))()
        n = lib.llama_tokenize(self._vocab, text, len(text), out, len(out), False, special)
        return list(out[:n]) if n >= 0 else None

    # -- chains ------------------------------------------------------------------------------
    def _run_chain(self, chain, ctx, row: int, stored: np.ndarray | None) -> int:
        if stored is None:
            return self._lib.llama_sampler_sample(chain, ctx, row)
        return self._sample_stored(chain, stored)

    def _sample_stored(self, chain, logits: np.ndarray) -> int:
        """What llama_sampler_sample does, over a logits row kept from an earlier step."""
        token = self._pick(chain, logits)
        self._lib.llama_sampler_accept(chain, token)
        return token

    def _candidates(self, logits: np.ndarray):
        lib = self._lib
        candidates = np.empty(self._n_vocab, dtype=TOKEN_DATA)
        candidates["id"] = np.arange(self._n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = lib.llama_token_data_array(
            candidates.ctypes.data_as(lib.llama_token_data_p), self._n_vocab, -1, False
        )
        return candidates, array

    def _grammar_allows(self, token: int) -> bool:
        return self._allows(self.grammar, token)

    def _allows(self, grammar, token: int) -> bool:
        lib = self._lib
        self._one[0].id = token
        self._one[0].logit = 0.0
        self._one_array.size = 1
        self._one_array.selected = -1
        lib.llama_sampler_apply(grammar, ctypes.byref(self._one_array))
        return self._one[0].logit != -math.inf

    def close(self) -> None:
        for name in ("fast", "chain", "_probe"):
            chain = getattr(self, name)
            if chain is not None:
                self._lib.llama_sampler_free(chain)
                setattr(self, name, None)
        self.grammar = None
        self._triggers = None


# A lazy grammar's trigger word, as a pattern: llama.cpp's regex_escape.
_WORD_SPECIALS = re.compile(r"[.^$|()*+?\[\]{}\\]")
# Tokens masked, one after another, before a lazy grammar that a reply keeps
# firing with text it refuses is dropped.
_TRIGGER_TRIES = 16


class _Triggers:
    """A lazy grammar's trigger state, as llama.cpp keeps it (llama_grammar_accept_impl).

    A trigger token fires at once and replays its piece. Otherwise each token's
    piece joins a buffer; a pattern fires where it is found in the buffer
    (`llama_grammar_trigger_pattern::find`: a `^...$` pattern must match the
    whole buffer, any other is searched for), and the tokens from its first
    non-empty group on are replayed, the first maybe in part. Patterns run as
    Python byte regexes: std::regex reads the patterns built here (escapes,
    classes, alternation, `(?:`) the same way, byte by byte.
    """

    def __init__(self, tokens: frozenset[int], sources: tuple[str, ...]) -> None:
        self.tokens = tokens
        self.sources = sources
        self._patterns = [
            (re.compile(p.encode("utf-8")), p.startswith("^") and p.endswith("$")) for p in sources
        ]
        self._buffer = b""
        self._spans: list[tuple[int, int, int]] = []  # token, start, end in the buffer

    def replay(self, token: int, piece: bytes) -> list[tuple[int, bytes]] | None:
        """What accepting `token` makes llama.cpp feed the grammar; None if nothing fires."""
        if token in self.tokens:
            return [(token, piece)]
        buffer = self._buffer + piece
        for pattern, whole in self._patterns:
            match = (pattern.fullmatch(buffer) if whole else None) or pattern.search(buffer)
            if match is None:
                continue
            groups = range(1, pattern.groups + 1)
            start = next(
                (match.start(i) for i in groups if match.end(i) > match.start(i)), match.start()
            )
            spans = [*self._spans, (token, len(self._buffer), len(buffer))]
            return [(t, buffer[max(s, start) : e]) for t, s, e in spans if e > start]
        return None

    def accept(self, token: int, piece: bytes, *, fired: bool) -> None:
        if fired:
            self._buffer, self._spans = b"", []
        else:
            self._spans.append((token, len(self._buffer), len(self._buffer) + len(piece)))
            self._buffer += piece


# llama_token_data, as numpy lays it out: a candidates array without a Python loop.
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def logits_row(ctx, row: int, n_vocab: int):
    from llama_cpp import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,))
