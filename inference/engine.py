"""The llama.cpp engine: one per loaded model, owning its context in one thread.

Callers never touch a llama.cpp context. They submit a job and get a handle;
the engine's thread runs a scheduler loop that decodes every active request in
one `llama_decode` per step, each request on its own llama.cpp sequence id
(its own KV cells), and pushes events into the handles. New requests join
between steps; their prompts are prefilled in chunks alongside the other
sequences' next tokens. Requests beyond `n_parallel` wait in a FIFO queue.
A finished sequence's cells stay behind as a prefix cache entry (bounded,
LRU) that a later prompt with the same beginning copies instead of
evaluating again. Async code iterates a handle with `async for`; sync code
with `for`. Cancelling a handle makes the engine drop the request at its next
step and free its sequence.

Nothing outside this module knows how many sequences are decoded at once.
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
import contextlib
import ctypes
import logging
import math
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger("llmsite.engine")

GGUF_MAGIC = b"GGUF"


class EngineError(RuntimeError):
    pass


class EngineClosed(EngineError):
    """The engine was unloaded; the request should be retried (it will load again)."""


class ModelLoadError(EngineError):
    """A GGUF could not be loaded; the message names the file and the reason."""


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    path: Path
    n_ctx: int = 2048
    n_threads: int = 1
    n_batch: int = 512
    embeddings: bool = True
    n_parallel: int = 8


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None: no logprobs. k >= 0: the chosen token's logprob plus the top k alternatives.
    logprobs: int | None = None
    grammar: str | None = None
    logit_bias: Mapping[int, float] | None = None  # token id -> added to its logit


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    n_tokens: int = 0  # tokens generated since the previous delta


@dataclass
class Finished:
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class Handle:
    """Where a job's events arrive. Iterate it (async or sync), or cancel it.

    Events are buffered under a lock; an async consumer parks on a future of
    whatever loop it iterates from (which need not be the loop that submitted
    the job: a streamed response is often consumed by another task or loop).
    """

    def __init__(self) -> None:
        self._events: deque[object] = deque()
        self._cond = threading.Condition()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._cancelled = threading.Event()
        self.started = threading.Event()

    # -- engine side ------------------------------------------------------
    def emit(self, event: object, deferred: list | None = None) -> None:
        """Queue an event and wake the consumer; with `deferred`, leave the wake-up there.

        The engine defers the wake-ups of one step's tokens and sends them with
        wake_all(): one call into each event loop per step, not one per token.
        """
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if deferred is not None:
            deferred.append((self, waiter))
        else:
            wake_all([(self, waiter)])

    # -- caller side ------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def __aiter__(self) -> AsyncIterator[object]:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._events:
                    event = self._events.popleft()
                    future = None
                else:
                    future = loop.create_future()
                    self._waiter = (loop, future)
            if future is not None:
                await future
                continue
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished | EmbeddingResult):
                return

    def __iter__(self) -> Iterator[object]:
        while True:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                event = self._events.popleft()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished | EmbeddingResult):
                return


_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future]


def wake_all(waiters: list[tuple[Handle, _Waiter]]) -> None:
    """Wake parked consumers: one call_soon_threadsafe per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Handle, asyncio.Future]]] = {}
    for handle, (loop, future) in waiters:
        by_loop.setdefault(loop, []).append((handle, future))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_wake, [future for _, future in items])
        except RuntimeError:
            # That loop is closed: nobody will read further events.
            for handle, _ in items:
                handle.cancel()


def _wake(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


@dataclass
class _GenerateJob:
    prompt_tokens: list[int]
    params: SamplingParams
    handle: Handle
    submitted_at: float = field(default_factory=time.monotonic)


@dataclass
class _EmbedJob:
    inputs: list[list[int]]
    handle: Handle


class _Sampler:
    """One sequence's sampling state.

    Plain greedy decoding (with or without logit_bias) takes the argmax in numpy;
    anything else runs a llama.cpp sampler chain over the same logits row.
    """

    def __init__(self, engine: LlamaEngine, params: SamplingParams) -> None:
        from llama_cpp import llama_cpp

        self._lib = llama_cpp
        self._n_vocab = engine.n_vocab
        self._vocab = engine._vocab
        self._n_ctx = engine.spec.n_ctx
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
                raise EngineError("the grammar could not be parsed")
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
        logits = _logits_row(ctx, row, self._n_vocab) if stored is None else stored
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
        candidates = np.empty(self._n_vocab, dtype=_TOKEN_DATA)
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
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def _logits_row(ctx, row: int, n_vocab: int):
    from llama_cpp import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,))


@dataclass(eq=False)
class _Seq:
    """A request being decoded: one llama.cpp sequence id, its own KV cells and sampler."""

    job: _GenerateJob
    seq_id: int
    sampler: _Sampler
    tokens: list[int]  # the prompt, then every sampled token
    n_past: int = 0  # how many of `tokens` are in the KV cells
    row: int = -1  # this step's logits row in the batch, or -1
    leader: _Seq | None = None  # n>1: a sequence whose prompt KV this one will copy
    followers: list[_Seq] = field(default_factory=list)
    # The logits after the prompt's last token: an exact repeat of this prompt
    # samples its first token from them instead of evaluating anything.
    prompt_logits: np.ndarray | None = None
    completion_tokens: int = 0
    unsent: int = 0  # tokens generated but not yet part of an emitted delta
    held: str = ""  # text withheld because it may be the start of a stop string
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def prompt_len(self) -> int:
        return len(self.job.prompt_tokens)


@dataclass(eq=False)
class _CacheEntry:
    seq_id: int
    tokens: list[int]
    prompt_len: int = 0  # tokens[:prompt_len] was a prompt, and `logits` came after it
    logits: np.ndarray | None = None


# A finished sequence shorter than this is not worth a prefix cache slot.
_MIN_PREFIX = 8
# Copying a cached entry costs per cell it holds (the whole entry is copied,
# then cut at the shared prefix); prefilling a prompt token costs about as much
# as copying 600 cells here (3 ms against 5 us). A shared prefix is reused when
# the copy is cheaper by this margin: any prefix of a short entry (the common
# case: a prompt template's first words), only a long prefix of a long one.
_CELLS_PER_TOKEN = 256
# While other sequences decode, a step prefills at most this many prompt tokens,
# so that a long prompt delays their next token by one short step, not one long one.
_PREFILL_CHUNK = 256


def check_gguf(path: Path) -> None:
    """Fail with a message naming the path unless it is a readable GGUF file."""
    if not path.exists():
        raise ModelLoadError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"GGUF path is not a file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"GGUF file cannot be read: {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"Not a GGUF file (bad magic {magic!r}): {path}")


class LlamaEngine:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.n_parallel = max(1, spec.n_parallel)
        # A finished sequence's cells stay in the prefix cache: one cache slot per
        # parallel sequence, each its own llama.cpp sequence id (and KV stream).
        self.n_cache = self.n_parallel
        self._cond = threading.Condition()
        self._waiting: deque[_GenerateJob | _EmbedJob] = deque()
        self._closing = False
        self._ready = threading.Event()
        self._load_error: ModelLoadError | None = None
        self._llm = None
        self._ctx = None
        self._mem = None
        self._batch = None
        self._copy_buffer = (ctypes.c_uint8 * 0)()
        self._deferred: list = []  # consumers to wake once a step's tokens are out
        self._embedder = None
        self._vocab = None
        self._pieces: dict[int, bytes] = {}
        self._active: list[_Seq] = []  # ascending seq_id
        # Sequence ids 0..n_parallel-1 are decoding slots; the ones above hold
        # the prefix cache. llama.cpp decodes a batch of per-sequence KV streams
        # in one pass only over consecutive ids, in ascending order: active
        # sequences take the lowest free slots and are kept packed (_compact).
        self._free_slots: list[int] = []
        self._free_cache_ids: list[int] = []
        self._cache: OrderedDict[int, _CacheEntry] = OrderedDict()  # LRU first
        self._n_swa = 0
        self._in_flight = 0
        self._counters = dict.fromkeys(
            (
                "prefix_cache_hits",
                "prefix_cache_misses",
                "prompt_tokens_evaluated",
                "prompt_tokens_reused",
                "tokens_generated",
                "decode_steps",
                "sequences_moved",
                "kv_cells_copied",
                "grammar_full_passes",
                "embedding_batches",
            ),
            0,
        )
        self._snapshot = {"kv_cells_used": 0, "kv_cells_active": 0, "kv_cells_cached": 0}
        self.loaded_at: float | None = None
        self.n_vocab = 0
        self.n_embd = 0
        self._thread = threading.Thread(
            target=self._run, name=f"engine:{spec.model_id}", daemon=True
        )
        self._thread.start()

    # -- lifecycle ----------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once loaded; raises ModelLoadError if loading failed."""
        ready = self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error
        return ready

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    @property
    def load_error(self) -> ModelLoadError | None:
        return self._load_error

    def close(self, timeout: float = 30) -> None:
        """Finish every job already queued, then free the contexts."""
        with self._cond:
            # Under the lock that guards _enqueue: no job can land after this.
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- stats (for routing, /ready and /metrics) -----------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def stats(self) -> dict[str, int]:
        """Plain numbers: load, KV cells, prefix cache and token counters."""
        with self._cond:
            return {
                "queue_depth": len(self._waiting),
                "in_flight": self._in_flight,
                "active_sequences": self._in_flight,
                "n_parallel": self.n_parallel,
                "n_ctx_per_sequence": self.spec.n_ctx,
                "prefix_cache_entries": len(self._cache),
                **self._snapshot,
                **self._counters,
            }

    # -- tokenizer ------------------------------------------------------------
    # The vocabulary is read-only once loaded, so tokenizing from request
    # threads does not touch the context the engine thread is decoding with.
    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        self.wait_ready()
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        self.wait_ready()
        return self._llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    # -- submission -----------------------------------------------------------
    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> Handle:
        handle = Handle()
        self._enqueue(_GenerateJob(list(prompt_tokens), params, handle))
        return handle

    def submit_embeddings(self, inputs: list[list[int]]) -> Handle:
        if not self.spec.embeddings:
            raise EngineError(f"model {self.spec.model_id} does not serve embeddings")
        handle = Handle()
        self._enqueue(_EmbedJob([list(tokens) for tokens in inputs], handle))
        return handle

    def _enqueue(self, job) -> None:
        with self._cond:
            if self._closing:
                raise EngineClosed(f"model {self.spec.model_id} was unloaded")
            self._waiting.append(job)
            self._cond.notify_all()

    # -- the engine thread: the scheduler loop ----------------------------------
    def _run(self) -> None:
        try:
            self._load()
        except ModelLoadError as exc:
            self._load_error = exc
            logger.error("model %s failed to load: %s", self.spec.model_id, exc)
        finally:
            self._ready.set()
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._active and not self._closing:
                        self._cond.wait()
                    if self._closing and not self._waiting and not self._active:
                        break
                    jobs = self._take_jobs()
                    self._in_flight += sum(isinstance(j, _GenerateJob) for j in jobs)
                try:
                    self._start(jobs)
                    self._compact()
                    if self._active:
                        try:
                            self._step()
                        except Exception as exc:
                            logger.exception("engine %s failed a step", self.spec.model_id)
                            self._fail_active(exc)
                finally:
                    self._wake_deferred()
                self._snapshot_cells()
        finally:
            self._free()

    def _take_jobs(self) -> list[_GenerateJob | _EmbedJob]:
        """The jobs to start now: FIFO, as many generations as free sequences allow.

        Embedding jobs need no sequence and never wait behind generations; a
        cancelled job leaves the queue wherever it stands.
        """
        taken = []
        room = self.n_parallel - len(self._active)
        kept: deque = deque()
        for job in self._waiting:
            if isinstance(job, _EmbedJob) or job.handle.cancelled or self._load_error:
                taken.append(job)
            elif room > 0:
                taken.append(job)
                room -= 1
            else:
                kept.append(job)
        self._waiting = kept
        return taken

    def _start(self, jobs: list[_GenerateJob | _EmbedJob]) -> None:
        embeds = []
        for job in jobs:
            if self._load_error is not None:
                job.handle.emit(self._load_error)
                self._leave(job)
            elif job.handle.cancelled:
                job.handle.emit(Finished("cancelled", len(getattr(job, "prompt_tokens", [])), 0))
                self._leave(job)
            elif isinstance(job, _EmbedJob):
                embeds.append(job)
            else:
                try:
                    self._admit(job)
                except Exception as exc:
                    logger.exception("engine %s could not start a job", self.spec.model_id)
                    job.handle.emit(exc if isinstance(exc, EngineError) else EngineError(str(exc)))
                    self._leave(job)
        if embeds:
            self._embed(embeds)

    def _wake_deferred(self) -> None:
        """Wake the consumers of the events emitted since the last call."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            wake_all(deferred)

    def _leave(self, job) -> None:
        if isinstance(job, _GenerateJob):
            with self._cond:
                self._in_flight -= 1

    def _load(self) -> None:
        check_gguf(self.spec.path)
        from llama_cpp import Llama, llama_cpp

        started = time.monotonic()
        try:
            # The Llama object holds the weights and the tokenizer; its own context
            # is kept tiny. Generation runs on a context of our own with one KV
            # stream per sequence id.
            self._llm = Llama(
                model_path=str(self.spec.path),
                n_ctx=16,
                n_batch=16,
                n_threads=self.spec.n_threads,
                n_threads_batch=self.spec.n_threads,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as a ValueError
            raise ModelLoadError(f"llama.cpp could not load {self.spec.path}: {exc}") from exc
        model = self._llm._model.model
        n_seq = self.n_parallel + self.n_cache
        self._batch_size = max(self.spec.n_batch, self.n_parallel)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.spec.n_ctx * n_seq
        params.n_batch = self._batch_size
        params.n_ubatch = self._batch_size
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = self.spec.n_threads
        # One stream per sequence: a sequence attends over its own cells only,
        # and its numbers do not depend on where other sequences' cells lie.
        params.kv_unified = False
        # Sliding-window layers keep every position too: a cached prefix stays
        # usable at any length (costs n_ctx cells per stream in those layers).
        params.swa_full = True
        # Flash attention, as llama-server uses on CPU: 158 against 150 tok/s
        # with 8 sequences here. Switching it off buys no determinism: either
        # way a sequence's last bits depend on its batch's KV length (measured).
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            self._llm.close()
            raise ModelLoadError(f"llama.cpp could not create a context for {self.spec.path}")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        self._free_slots = list(range(self.n_parallel))
        self._free_cache_ids = list(range(self.n_parallel, n_seq))
        self._n_swa = llama_cpp.llama_model_n_swa(model)
        self._vocab = self._llm._model.vocab
        self._lib = llama_cpp
        self.n_vocab = self._llm.n_vocab()
        self.n_embd = self._llm.n_embd()
        self.loaded_at = time.time()
        logger.info(
            "loaded %s from %s in %.2fs (n_ctx=%d per sequence, n_parallel=%d, threads=%d)",
            self.spec.model_id,
            self.spec.path,
            time.monotonic() - started,
            self.spec.n_ctx,
            self.n_parallel,
            self.spec.n_threads,
        )

    def _free(self) -> None:
        for seq in list(self._active):
            seq.job.handle.emit(EngineClosed(f"model {self.spec.model_id} was unloaded"))
            seq.sampler.close()
        self._active.clear()
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._lib.llama_free(self._ctx)
            self._ctx = self._mem = None
        for llm in (self._llm, self._embedder):
            if llm is not None:
                with contextlib.suppress(Exception):
                    llm.close()
        self._llm = self._embedder = None

    # -- admission: sequence ids, n>1 sharing and the prefix cache ----------------
    def _admit(self, job: _GenerateJob) -> None:
        prompt = job.prompt_tokens
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.spec.n_ctx:
            raise EngineError(f"the prompt does not fit the context ({self.spec.n_ctx} tokens)")
        sampler = _Sampler(self, job.params)
        seq = _Seq(job, self._take_slot(), sampler, list(prompt))
        self._lib.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        job.handle.started.set()
        # The same prompt already being prefilled (n>1, or identical requests):
        # wait for its KV and copy it rather than compute it again.
        leader = next(
            (
                s
                for s in self._active
                if s.leader is None and s.completion_tokens == 0 and s.tokens == prompt
            ),
            None,
        )
        if leader is not None:
            seq.leader = leader
            leader.followers.append(seq)
        else:
            self._reuse_prefix(seq)
        bisect.insort(self._active, seq, key=_by_seq_id)

    def _take_slot(self) -> int:
        slot = min(self._free_slots)
        self._free_slots.remove(slot)
        return slot

    def _compact(self) -> None:
        """Move the highest active sequences into free lower slots.

        A batch over sequence ids with a gap costs llama.cpp one more pass over the
        weights every step; one copy of the moved sequence's KV stream costs less.
        """
        lib = self._lib
        while self._free_slots and self._active:
            hole = min(self._free_slots)
            top = self._active[-1]
            if top.seq_id < hole:
                return
            if not self._copy_seq(top.seq_id, hole):
                return  # it stays where it is: one more pass per step, still correct
            lib.llama_memory_seq_rm(self._mem, top.seq_id, -1, -1)
            self._free_slots.remove(hole)
            self._free_slots.append(top.seq_id)
            top.seq_id = hole
            self._active.sort(key=_by_seq_id)
            self._counters["sequences_moved"] += 1

    def _copy_seq(self, src: int, dst: int) -> bool:
        """Give the empty sequence `dst` a copy of the cells of `src`; False if it failed.

        Between separate KV streams, llama_memory_seq_cp copies the whole stream,
        every cell of n_ctx in every layer (about 20 ms at 4096 here) however few
        cells the sequence uses. llama.cpp's sequence state holds only the cells in
        use, so a trip through it costs in proportion to them (under 1 ms for a
        140-token sequence).
        """
        lib, ctx = self._lib, self._ctx
        size = lib.llama_state_seq_get_size(ctx, src)
        if len(self._copy_buffer) < size:
            self._copy_buffer = (ctypes.c_uint8 * max(size, 2 * len(self._copy_buffer)))()
        buffer = self._copy_buffer
        written = lib.llama_state_seq_get_data(ctx, buffer, size, src)
        if written == 0 or lib.llama_state_seq_set_data(ctx, buffer, written, dst) != written:
            lib.llama_memory_seq_rm(self._mem, dst, -1, -1)
            logger.error("engine %s could not copy sequence %d to %d", self.spec.model_id, src, dst)
            return False
        self._counters["kv_cells_copied"] += lib.llama_memory_seq_pos_max(self._mem, dst) + 1
        return True

    def _evict(self) -> None:
        _, entry = self._cache.popitem(last=False)
        self._lib.llama_memory_seq_rm(self._mem, entry.seq_id, -1, -1)
        self._free_cache_ids.append(entry.seq_id)

    def _reuse_prefix(self, seq: _Seq) -> None:
        """Start `seq` from the cached sequence sharing the longest prefix with its prompt.

        An exact repeat of a cached prompt takes all its cells and the logits that
        followed them: nothing is evaluated, and the first token is sampled from
        the same numbers as the first time (greedy gives the same text).
        """
        prompt = seq.tokens
        best, best_len, exact = None, 0, False
        for entry in self._cache.values():
            n = _common_prefix(entry.tokens, prompt)
            hit = n == len(prompt) == entry.prompt_len and entry.logits is not None
            if (hit, n) > (exact, best_len) or (
                (hit, n) == (exact, best_len) and best and len(entry.tokens) < len(best.tokens)
            ):
                best, best_len, exact = entry, n, hit
        # Otherwise at least the last prompt token is evaluated: its logits pick
        # the first token.
        reuse = best_len if exact else min(best_len, len(prompt) - 1)
        if (
            best is None
            or reuse < 1
            or len(best.tokens) > reuse * _CELLS_PER_TOKEN
            or not self._window_intact(best, reuse)
        ):
            self._counters["prefix_cache_misses"] += 1
            return
        lib = self._lib
        if not self._copy_seq(best.seq_id, seq.seq_id) or not lib.llama_memory_seq_rm(
            self._mem, seq.seq_id, reuse, -1
        ):
            lib.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            self._counters["prefix_cache_misses"] += 1
            return
        self._cache.move_to_end(best.seq_id)
        seq.n_past = reuse
        if exact:
            seq.prompt_logits = best.logits  # read only: shared with the entry
        self._counters["prefix_cache_hits"] += 1
        self._counters["prompt_tokens_reused"] += reuse

    def _window_intact(self, entry: _CacheEntry, reuse: int) -> bool:
        # A sliding-window layer keeps only the last n_swa positions of a
        # sequence: continuing at `reuse` needs the window before it.
        if self._n_swa <= 0:
            return True
        pos_min = self._lib.llama_memory_seq_pos_min(self._mem, entry.seq_id)
        return pos_min <= max(0, reuse - self._n_swa)

    def _retire(self, seq: _Seq) -> None:
        """Free a finished sequence; its KV cells become a prefix cache entry."""
        seq.sampler.close()
        self._counters["grammar_full_passes"] += seq.sampler.grammar_full_passes
        self._active.remove(seq)
        if seq.followers:
            # The leader left before its prompt was evaluated: its first
            # follower starts over and leads the others.
            new_leader, *rest = seq.followers
            new_leader.leader = None
            new_leader.followers = rest
            for follower in rest:
                follower.leader = new_leader
            self._reuse_prefix(new_leader)
        if seq.leader is not None:
            seq.leader.followers.remove(seq)
        self._leave(seq.job)
        kept = seq.tokens[: seq.n_past]
        if seq.leader is None and len(kept) >= _MIN_PREFIX:
            self._cache_store(seq, kept)
        self._lib.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        self._free_slots.append(seq.seq_id)

    def _cache_store(self, seq: _Seq, tokens: list[int]) -> None:
        """Keep a finished slot's cells as a prefix cache entry (a copy of its stream)."""
        logits = seq.prompt_logits if len(tokens) >= seq.prompt_len else None
        for entry in self._cache.values():
            covered = _common_prefix(entry.tokens, tokens) == len(tokens)
            if covered and (
                logits is None or (entry.logits is not None and entry.prompt_len == seq.prompt_len)
            ):
                # An entry already holds these cells and this prompt's logits
                # (an exact repeat that generated the same tokens, or fewer).
                self._cache.move_to_end(entry.seq_id)
                return
        for entry in list(self._cache.values()):
            if _common_prefix(entry.tokens, tokens) == len(entry.tokens):
                # The new entry covers the old one.
                del self._cache[entry.seq_id]
                self._lib.llama_memory_seq_rm(self._mem, entry.seq_id, -1, -1)
                self._free_cache_ids.append(entry.seq_id)
        if not self._free_cache_ids:
            self._evict()
        cache_id = self._free_cache_ids.pop()
        if self._copy_seq(seq.seq_id, cache_id):
            self._cache[cache_id] = _CacheEntry(cache_id, tokens, seq.prompt_len, logits)
        else:
            self._free_cache_ids.append(cache_id)

    # -- one decode step for every active sequence ---------------------------------
    def _step(self) -> None:
        lib = self._lib
        for seq in [s for s in self._active if s.job.handle.cancelled]:
            self._finish(seq, "cancelled")
        # Exact repeats of a cached prompt: every cell is there, and so are the
        # logits that followed it.
        for seq in [
            s
            for s in self._active
            if s.leader is None and s.completion_tokens == 0 and s.n_past == len(s.tokens)
        ]:
            self._prompt_done(seq, -1, seq.prompt_logits)
        self._wake_deferred()  # those first tokens go out now, not after the decode below
        if not self._active:
            return
        # Sequences one token away from their next logits go first (a generated
        # token, or a prompt's last one); prompts fill the rest of the batch,
        # their last token with logits when the whole rest fits.
        plan: list[tuple[_Seq, int, bool]] = []  # (sequence, tokens, wants logits)
        for seq in self._active:
            seq.row = -1
            if seq.leader is None and seq.n_past == len(seq.tokens) - 1:
                plan.append((seq, 1, True))
        budget = self._batch_size - len(plan)
        if plan:
            budget = min(budget, _PREFILL_CHUNK)
        for seq in self._active:
            if budget <= 0:
                break
            remaining = len(seq.tokens) - seq.n_past
            if seq.leader is None and remaining > 1:
                take = min(budget, remaining)
                plan.append((seq, take, take == remaining))
                budget -= take
        if not plan:
            return
        # In ascending sequence id order: llama.cpp splits a batch of separate
        # KV streams into one pass per run of consecutive ids, taken in order.
        plan.sort(key=lambda item: item[0].seq_id)
        batch = self._batch
        n = 0
        rows: list[_Seq] = []
        for seq, count, logits in plan:
            sid = seq.seq_id
            start = seq.n_past
            for i in range(count):
                batch.token[n] = seq.tokens[start + i]
                batch.pos[n] = start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sid
                batch.logits[n] = 0
                n += 1
            if logits:
                batch.logits[n - 1] = 1
                seq.row = n - 1
                rows.append(seq)
        batch.n_tokens = n
        status = lib.llama_decode(self._ctx, batch)
        self._counters["decode_steps"] += 1
        if status != 0:
            raise EngineError(f"llama_decode failed ({status})")
        for seq, count, _ in plan:
            seq.n_past += count
            if seq.completion_tokens == 0:
                self._counters["prompt_tokens_evaluated"] += count
        for seq in rows:
            if seq.completion_tokens == 0:
                seq.prompt_logits = _logits_row(self._ctx, seq.row, self.n_vocab).copy()
                self._prompt_done(seq, seq.row)
            else:
                self._sample(seq, seq.row)

    def _prompt_done(self, seq: _Seq, row: int, stored: np.ndarray | None = None) -> None:
        """A prompt is in the cells: sample its first token, and its n>1 followers'."""
        for follower in list(seq.followers):
            follower.leader = None
            if not self._copy_seq(seq.seq_id, follower.seq_id):
                continue  # it evaluates the prompt itself, from the next step
            # n>1: the prompt's cells are copied; sample from the same logits.
            follower.n_past = seq.n_past
            follower.prompt_logits = seq.prompt_logits
            self._counters["prompt_tokens_reused"] += seq.n_past
            self._sample(follower, row, stored)
        seq.followers.clear()
        self._sample(seq, row, stored)

    def _fail_active(self, exc: Exception) -> None:
        for seq in list(self._active):
            if seq in self._active:
                seq.job.handle.emit(EngineError(str(exc)))
                self._lib.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
                seq.n_past = 0
                self._retire(seq)

    def _sample(self, seq: _Seq, row: int, stored: np.ndarray | None = None) -> None:
        """Sample from batch row `row`, or from `stored` logits when given."""
        token = seq.sampler.sample(self._ctx, row, stored)
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        params = seq.job.params
        handle = seq.job.handle
        seq.tokens.append(token)
        seq.completion_tokens += 1
        seq.unsent += 1
        self._counters["tokens_generated"] += 1
        piece = self._piece(token)
        if params.logprobs is not None:
            seq.pending_logprobs.append(
                self._token_logprob(token, piece, params.logprobs, row, stored)
            )
        text = seq.held + seq.decoder.decode(piece)
        emit, seq.held, stopped = _split_stop(text, tuple(s for s in params.stop if s))
        if emit or (seq.pending_logprobs and not seq.held):
            handle.emit(TextDelta(emit, seq.pending_logprobs, seq.unsent), self._deferred)
            seq.pending_logprobs = []
            seq.unsent = 0
        if stopped:
            self._finish(seq, "stop")
        elif seq.completion_tokens >= params.max_tokens or len(seq.tokens) >= self.spec.n_ctx:
            self._finish(seq, "length")

    def _finish(self, seq: _Seq, reason: str) -> None:
        handle = seq.job.handle
        if reason != "cancelled":
            tail = seq.held + seq.decoder.decode(b"", final=True)
            if tail or seq.pending_logprobs or seq.unsent:
                handle.emit(TextDelta(tail, seq.pending_logprobs, seq.unsent))
        # Freed before the caller hears of the end: stats() read after a
        # request finished no longer counts its sequence.
        self._retire(seq)
        self._snapshot_cells()
        handle.emit(Finished(reason, seq.prompt_len, seq.completion_tokens))

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llm.detokenize([token])
        return piece

    def _snapshot_cells(self) -> None:
        """Cells held per llama.cpp itself, read here: only this thread may touch the context."""
        if self._mem is None:
            return
        lib = self._lib

        def cells(seq_id: int) -> int:
            return lib.llama_memory_seq_pos_max(self._mem, seq_id) + 1

        active = sum(cells(s.seq_id) for s in self._active)
        cached = sum(cells(e.seq_id) for e in self._cache.values())
        free = sum(cells(i) for i in (*self._free_slots, *self._free_cache_ids))
        with self._cond:
            self._snapshot = {
                "kv_cells_used": active + cached + free,
                "kv_cells_active": active,
                "kv_cells_cached": cached,
            }

    def _token_logprob(
        self, token: int, piece: bytes, top_n: int, row: int, stored: np.ndarray | None = None
    ) -> TokenLogprob:
        logits = _logits_row(self._ctx, row, self.n_vocab) if stored is None else stored
        logits = logits.astype(np.float64)
        peak = logits.max()
        logsumexp = peak + math.log(np.exp(logits - peak).sum())
        chosen = float(logits[token] - logsumexp)
        top: list[tuple[str, list[int], float]] = []
        if top_n > 0:
            ids = np.argpartition(-logits, top_n)[:top_n]
            ids = ids[np.argsort(-logits[ids])]
            for tid in ids:
                raw = self._piece(int(tid))
                top.append(
                    (
                        raw.decode("utf-8", errors="replace"),
                        list(raw),
                        float(logits[tid] - logsumexp),
                    )
                )
        return TokenLogprob(piece.decode("utf-8", errors="replace"), list(piece), chosen, top)

    # -- embeddings ---------------------------------------------------------------
    def _embed(self, jobs: list[_EmbedJob]) -> None:
        """Every queued embedding job at once: inputs of several requests share batches."""
        try:
            self._embed_batches(jobs)
        except Exception as exc:
            logger.exception("engine %s failed an embedding batch", self.spec.model_id)
            for job in jobs:
                job.handle.emit(EngineError(str(exc)))

    def _embed_batches(self, jobs: list[_EmbedJob]) -> None:
        from llama_cpp import Llama, llama_cpp

        if self._embedder is None:
            # A second context in embedding mode (mean pooling) over the same
            # weights; generation and embedding outputs are configured differently.
            self._embedder = Llama(
                model_path=str(self.spec.path),
                n_ctx=self.spec.n_ctx,
                n_batch=self.spec.n_ctx,
                n_ubatch=self.spec.n_ctx,
                n_threads=self.spec.n_threads,
                n_threads_batch=self.spec.n_threads,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        emb = self._embedder
        n_batch = emb.n_batch
        n_seq_max = emb.context_params.n_seq_max
        inputs = [tokens for job in jobs for tokens in job.inputs]
        vectors: list[list[float]] = []
        batch: list[list[int]] = []
        batch_tokens = 0

        def flush() -> None:
            if not batch:
                return
            emb._batch.reset()
            for seq_id, tokens in enumerate(batch):
                emb._batch.add_sequence(tokens, seq_id, True)
            emb._ctx.kv_cache_clear()
            emb._ctx.decode(emb._batch)
            self._counters["embedding_batches"] += 1
            for seq_id in range(len(batch)):
                ptr = llama_cpp.llama_get_embeddings_seq(emb._ctx.ctx, seq_id)
                vec = np.array(ptr[: self.n_embd], dtype=np.float64)
                norm = np.linalg.norm(vec)
                vectors.append((vec / norm if norm > 0 else vec).tolist())
            emb._batch.reset()
            batch.clear()

        for tokens in inputs:
            if batch_tokens + len(tokens) > n_batch or len(batch) >= n_seq_max:
                flush()
                batch_tokens = 0
            batch.append(tokens)
            batch_tokens += len(tokens)
        flush()
        emb._ctx.kv_cache_clear()
        start = 0
        for job in jobs:
            count = len(job.inputs)
            if job.handle.cancelled:
                job.handle.emit(Finished("cancelled", 0, 0))
            else:
                job.handle.emit(
                    EmbeddingResult(vectors[start : start + count], sum(len(t) for t in job.inputs))
                )
            start += count


def _by_seq_id(seq: _Seq) -> int:
    return seq.seq_id


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n])
    y = np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


def _split_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split `text` into (safe to emit, withheld, stop string found)."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    # Withhold the longest suffix that could still grow into a stop string.
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    if keep:
        return text[:-keep], text[-keep:], False
    return text, "", False
