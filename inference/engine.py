"""The llama.cpp engine: one per loaded model, owning its contexts in one thread.

Callers never touch a llama.cpp context. They submit a job and get a handle;
the engine's thread runs jobs one after another (so no two requests ever
share a context at the same time, and a running stream is never cut off to
serve another), pushing events into the handle. Async code iterates the
handle with `async for`; sync code with `for`. Cancelling a handle makes the
engine drop the job at its next decode step.

Nothing outside this module knows how many sequences are decoded at once.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    def emit(self, event: object) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:
                # That loop is closed: nobody will read further events.
                self._cancelled.set()

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


def _wake(future: asyncio.Future) -> None:
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


_STOP = object()


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
        self._jobs: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._load_error: ModelLoadError | None = None
        self._llm = None
        self._embedder = None
        self._vocab = None
        self._queued = 0
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._closed = False
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
        with self._count_lock:
            # Under the lock that guards _enqueue: no job can land behind _STOP.
            self._closed = True
            self._jobs.put(_STOP)
        self._thread.join(timeout)

    # -- stats (for routing and /ready) -------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        return self._in_flight

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
        with self._count_lock:
            if self._closed:
                raise EngineClosed(f"model {self.spec.model_id} was unloaded")
            self._queued += 1
            self._jobs.put(job)

    # -- the engine thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            self._load()
        except ModelLoadError as exc:
            self._load_error = exc
            logger.error("model %s failed to load: %s", self.spec.model_id, exc)
        finally:
            self._ready.set()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            with self._count_lock:
                self._queued -= 1
                self._in_flight += 1
            try:
                if self._load_error is not None:
                    job.handle.emit(self._load_error)
                elif job.handle.cancelled:
                    job.handle.emit(
                        Finished("cancelled", len(getattr(job, "prompt_tokens", [])), 0)
                    )
                elif isinstance(job, _GenerateJob):
                    self._generate(job)
                else:
                    self._embed(job)
            except Exception as exc:
                logger.exception("engine %s failed a job", self.spec.model_id)
                job.handle.emit(EngineError(str(exc)))
            finally:
                with self._count_lock:
                    self._in_flight -= 1
        self._free()

    def _load(self) -> None:
        check_gguf(self.spec.path)
        from llama_cpp import Llama, llama_cpp

        started = time.monotonic()
        try:
            self._llm = Llama(
                model_path=str(self.spec.path),
                n_ctx=self.spec.n_ctx,
                n_batch=self.spec.n_batch,
                n_threads=self.spec.n_threads,
                n_threads_batch=self.spec.n_threads,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as a ValueError
            raise ModelLoadError(f"llama.cpp could not load {self.spec.path}: {exc}") from exc
        self._vocab = self._llm._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._get_logits_ith = llama_cpp.llama_get_logits_ith
        self.n_vocab = self._llm.n_vocab()
        self.n_embd = self._llm.n_embd()
        self.loaded_at = time.time()
        logger.info(
            "loaded %s from %s in %.2fs (n_ctx=%d, threads=%d)",
            self.spec.model_id,
            self.spec.path,
            time.monotonic() - started,
            self.spec.n_ctx,
            self.spec.n_threads,
        )

    def _free(self) -> None:
        for llm in (self._llm, self._embedder):
            if llm is not None:
                with contextlib.suppress(Exception):
                    llm.close()
        self._llm = self._embedder = None

    # -- generation -------------------------------------------------------------
    def _generate(self, job: _GenerateJob) -> None:
        llm = self._llm
        params = job.params
        handle = job.handle
        grammar = None
        if params.grammar:
            from llama_cpp import LlamaGrammar

            grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        llm.set_seed(seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = tuple(s for s in params.stop if s)
        held = ""  # text withheld because it may be the start of a stop string
        pending_logprobs: list[TokenLogprob] = []
        completion_tokens = 0
        unsent = 0  # tokens generated but not yet part of an emitted delta
        finish = "length"
        handle.started.set()
        # Evaluate the whole prompt every time. Reusing a cached prefix would
        # re-decode the prompt's last token in a batch of one, whose logits
        # differ in the last bits from the full batch: greedy output would then
        # depend on what ran before, and `temperature: 0` must be repeatable.
        llm.reset()
        tokens = llm.generate(
            job.prompt_tokens,
            reset=False,
            top_k=0,
            top_p=params.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=params.temperature,
            repeat_penalty=1.0,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )
        try:
            for token in tokens:
                # Checked once per decoded token: a cancelled request leaves
                # within one decode step.
                if handle.cancelled:
                    finish = "cancelled"
                    break
                if self._is_eog(self._vocab, token):
                    finish = "stop"
                    break
                completion_tokens += 1
                unsent += 1
                piece_bytes = llm.detokenize([token])
                if params.logprobs is not None:
                    pending_logprobs.append(
                        self._token_logprob(token, piece_bytes, params.logprobs)
                    )
                text = held + decoder.decode(piece_bytes)
                emit, held, stopped = _split_stop(text, stops)
                if emit or (pending_logprobs and not held):
                    handle.emit(TextDelta(emit, pending_logprobs, unsent))
                    pending_logprobs = []
                    unsent = 0
                if stopped:
                    finish = "stop"
                    break
                if completion_tokens >= params.max_tokens:
                    break
        finally:
            tokens.close()
        if finish != "cancelled":
            tail = held + decoder.decode(b"", final=True)
            if tail or pending_logprobs or unsent:
                handle.emit(TextDelta(tail, pending_logprobs, unsent))
        handle.emit(Finished(finish, len(job.prompt_tokens), completion_tokens))

    def _token_logprob(self, token: int, piece: bytes, top_n: int) -> TokenLogprob:
        import numpy as np

        # The logits that produced `token` are still the context's last output:
        # the generator evaluates the token only when asked for the next one.
        ptr = self._get_logits_ith(self._llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        logsumexp = peak + math.log(np.exp(logits - peak).sum())
        chosen = float(logits[token] - logsumexp)
        top: list[tuple[str, list[int], float]] = []
        if top_n > 0:
            ids = np.argpartition(-logits, top_n)[:top_n]
            ids = ids[np.argsort(-logits[ids])]
            for tid in ids:
                raw = self._llm.detokenize([int(tid)])
                top.append(
                    (
                        raw.decode("utf-8", errors="replace"),
                        list(raw),
                        float(logits[tid] - logsumexp),
                    )
                )
        return TokenLogprob(piece.decode("utf-8", errors="replace"), list(piece), chosen, top)

    # -- embeddings ---------------------------------------------------------------
    def _embed(self, job: _EmbedJob) -> None:
        import numpy as np
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
            for seq_id in range(len(batch)):
                ptr = llama_cpp.llama_get_embeddings_seq(emb._ctx.ctx, seq_id)
                vec = np.array(ptr[: self.n_embd], dtype=np.float64)
                norm = np.linalg.norm(vec)
                vectors.append((vec / norm if norm > 0 else vec).tolist())
            emb._batch.reset()
            batch.clear()

        for tokens in job.inputs:
            if job.handle.cancelled:
                job.handle.emit(Finished("cancelled", 0, 0))
                return
            if batch_tokens + len(tokens) > n_batch or len(batch) >= n_seq_max:
                flush()
                batch_tokens = 0
            batch.append(tokens)
            batch_tokens += len(tokens)
        flush()
        emb._ctx.kv_cache_clear()
        job.handle.emit(EmbeddingResult(vectors, sum(len(t) for t in job.inputs)))


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
