"""LlamaEngine: the scheduler loop that owns one model's llama.cpp context in one thread.

Every active request is decoded in one `llama_decode` per step, each on its own
llama.cpp sequence id (its own KV cells). New requests join between steps; their
prompts are prefilled in chunks alongside the other sequences' next tokens.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

import numpy as np

from inference.engine.embedder import Embedder
from inference.engine.errors import EngineClosed, EngineError, GrammarError, ModelLoadError
from inference.engine.events import EmbeddingResult, Finished, TextDelta, TokenLogprob
from inference.engine.gbnf import check_grammar
from inference.engine.handle import Handle, wake_all
from inference.engine.jobs import EmbedJob, GenerateJob, Seq
from inference.engine.kv import KVCells
from inference.engine.prefix_cache import MIN_PREFIX, PrefixCache
from inference.engine.sampler import Sampler, logits_row
from inference.engine.spec import ModelSpec, SamplingParams, check_gguf
from inference.engine.text import split_stop

logger = logging.getLogger("llmsite.engine")

# While other sequences decode, a step prefills at most this many prompt tokens,
# so that a long prompt delays their next token by one short step, not one long one.
_PREFILL_CHUNK = 256


class LlamaEngine:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.n_parallel = max(1, spec.n_parallel)
        # A finished sequence's cells stay in the prefix cache: one cache slot per
        # parallel sequence, each its own llama.cpp sequence id (and KV stream).
        self.n_cache = self.n_parallel
        self._cond = threading.Condition()
        self._waiting: deque[GenerateJob | EmbedJob] = deque()
        # Embedding jobs under way: one batch of their inputs per step.
        self._embedding: deque[EmbedJob] = deque()
        # Queued and running jobs per owner (tenant); read without the lock.
        self._owners: dict[str, int] = {}
        # Grammars llama.cpp accepted lately (a JSON mode's grammar recurs); the
        # lock keeps the model (and its vocabulary) alive during a check.
        self._grammar_lock = threading.Lock()
        self._grammars_ok: OrderedDict[str, None] = OrderedDict()
        self._closing = False
        self._ready = threading.Event()
        self._load_error: ModelLoadError | None = None
        self._llm = None
        self._ctx = None
        self._kv: KVCells | None = None
        self._batch = None
        self._deferred: list = []  # consumers to wake once a step's tokens are out
        self._embedder: Embedder | None = None
        self._vocab = None
        self._pieces: dict[int, bytes] = {}
        self._active: list[Seq] = []  # ascending seq_id
        # Sequence ids 0..n_parallel-1 are decoding slots; the ones above hold
        # the prefix cache. llama.cpp decodes a batch of per-sequence KV streams
        # in one pass only over consecutive ids, in ascending order: active
        # sequences take the lowest free slots and are kept packed (_compact).
        self._free_slots: list[int] = []
        self._prefix: PrefixCache | None = None
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
                "lazy_grammars",  # jobs that ran with a lazy grammar
                "lazy_grammars_triggered",  # ... and whose grammar a trigger started
                "embedding_batches",
                "embedding_jobs_cancelled",
                "peak_active_sequences",
                "admission_waits",  # times an idle engine waited for announced requests
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
                "prefix_cache_entries": len(self._prefix or ()),
                "embedding_jobs_active": len(self._embedding),
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
    def submit(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        *,
        owner: str | None = None,
        coming: int = 0,
        source: object = None,
    ) -> Handle:
        """Queue a generation. `owner` (the tenant) counts it in owner_load() until it
        ends, and gives each owner its turn at free sequences. `coming` is the
        submitter's (`source`'s) count of further requests for this model on
        their way: an idle engine waits a moment for them (_gather)."""
        if params.grammar:
            self.check_grammar(params.grammar)
        handle = Handle()
        self._enqueue(
            GenerateJob(
                list(prompt_tokens), params, handle, owner, coming=max(0, coming), source=source
            )
        )
        return handle

    def check_grammar(self, grammar: str) -> None:
        """Raise GrammarError unless the engine will run `grammar`: within the bounds
        of gbnf.check_grammar, then parsed by llama.cpp. From any thread.

        Before the model is loaded only the bounds are checked; the engine thread
        parses the grammar again at admission and answers the handle with a
        GrammarError if llama.cpp refuses it.
        """
        check_grammar(grammar)
        if not self.is_ready or grammar in self._grammars_ok:
            return
        with self._grammar_lock:
            if self._llm is None:
                raise EngineClosed(f"model {self.spec.model_id} was unloaded")
            # The vocabulary is read-only once loaded: a parse here does not
            # touch the context the engine thread is decoding with.
            sampler = self._lib.llama_sampler_init_grammar(
                self._vocab, grammar.encode("utf-8"), b"root"
            )
            if not sampler:
                raise GrammarError("llama.cpp could not parse the grammar")
            self._lib.llama_sampler_free(sampler)
            self._grammars_ok[grammar] = None
            while len(self._grammars_ok) > 16:
                self._grammars_ok.popitem(last=False)

    def submit_embeddings(self, inputs: list[list[int]], *, owner: str | None = None) -> Handle:
        if not self.spec.embeddings:
            raise EngineError(f"model {self.spec.model_id} does not serve embeddings")
        handle = Handle()
        self._enqueue(EmbedJob([list(tokens) for tokens in inputs], handle, owner))
        return handle

    def owner_load(self, owner: str) -> int:
        """Jobs of `owner` queued or running now (embedding requests included)."""
        # A dict read is atomic: no lock, so a service can ask on every request.
        return self._owners.get(owner, 0)

    def _enqueue(self, job) -> None:
        with self._cond:
            if self._closing:
                raise EngineClosed(f"model {self.spec.model_id} was unloaded")
            if job.owner is not None:
                self._owners[job.owner] = self._owners.get(job.owner, 0) + 1
            self._waiting.append(job)
            self._cond.notify_all()

    # -- the engine thread: the scheduler loop ----------------------------------
    def _run(self) -> None:
        # llama.cpp's compute threads (OpenMP's team, started by this thread's
        # first decode) spin between steps and barriers: with no idle core, a
        # thread that wakes to pass a token on (this process's event loop, a
        # worker's socket, the gateway's) would queue behind them for a time
        # slice: on 2 cores a first token took 7.9 ms (median) from the end of
        # its prefill to the gateway, against 1.6 ms at nice 10. A higher nice
        # value, inherited by the threads this one starts, lets those wake at
        # once; the engine still gets every idle cycle.
        _lower_priority(self.spec.nice)
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
                    while not (self._waiting or self._active or self._embedding or self._closing):
                        self._cond.wait()
                    if self._closing and not (self._waiting or self._active or self._embedding):
                        break
                    if not (self._active or self._embedding):
                        self._gather()
                    jobs = self._take_jobs()
                    self._in_flight += sum(isinstance(j, GenerateJob) for j in jobs)
                try:
                    self._start(jobs)
                    self._compact()
                    if len(self._active) > self._counters["peak_active_sequences"]:
                        self._counters["peak_active_sequences"] = len(self._active)
                    if self._active:
                        try:
                            self._step()
                        except Exception as exc:
                            logger.exception("engine %s failed a step", self.spec.model_id)
                            self._fail_active(exc)
                finally:
                    self._wake_deferred()
                if self._embedding:
                    # One batch per step: a long embeddings request delays each
                    # stream's next token by one batch, not by the whole request.
                    self._embed_step()
                self._snapshot_cells()
        finally:
            self._free()

    def _gather(self) -> None:
        """Waking from idle (the lock held): wait, up to the admission window, for
        the requests the submitters say are on their way.

        A gateway reaches its engine one request at a time, a few milliseconds
        apart, so a burst of simultaneous requests would otherwise start with
        the first prompt prefilled alone and the rest waiting out its prefill.
        Each submission carries its source's count of requests still on their
        way (the latest one per source is current); with none announced, or
        sequences enough to fill every free slot, nothing waits. Once sequences
        are decoding, new prompts join the next step anyway: no wait then.
        """
        window = self.spec.admission_window_ms / 1000
        if window <= 0:
            return
        deadline = time.monotonic() + window
        waited = False
        while not self._closing and len(self._waiting) < self.n_parallel:
            latest: dict[object, int] = {}
            for job in self._waiting:
                if isinstance(job, GenerateJob):
                    latest[job.source] = job.coming
            if not any(latest.values()):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waited = True
            self._cond.wait(left)
        if waited:
            self._counters["admission_waits"] += 1

    def _take_jobs(self) -> list[GenerateJob | EmbedJob]:
        """The jobs to start now: as many generations as free sequences allow.

        Embedding jobs need no sequence and never wait behind generations; a
        cancelled job leaves the queue wherever it stands. Free sequences go to
        the owners running the fewest (fair_pick).
        """
        taken = []
        candidates = []
        for job in self._waiting:
            if isinstance(job, EmbedJob) or job.handle.cancelled or self._load_error:
                taken.append(job)
            else:
                candidates.append(job)
        room = self.n_parallel - len(self._active)
        chosen = fair_pick(candidates, [s.job.owner for s in self._active], room)
        if chosen:
            picked = set(map(id, chosen))
            taken.extend(chosen)
            candidates = [job for job in candidates if id(job) not in picked]
        self._waiting = deque(candidates)
        return taken

    def _start(self, jobs: list[GenerateJob | EmbedJob]) -> None:
        for job in jobs:
            if self._load_error is not None:
                job.handle.emit(self._load_error)
                self._leave(job)
            elif job.handle.cancelled:
                if isinstance(job, EmbedJob):
                    self._counters["embedding_jobs_cancelled"] += 1
                job.handle.emit(Finished("cancelled", len(getattr(job, "prompt_tokens", [])), 0))
                self._leave(job)
            elif isinstance(job, EmbedJob):
                self._embedding.append(job)
            else:
                try:
                    self._admit(job)
                except GrammarError as exc:
                    # The caller's grammar, not the engine's fault: no traceback.
                    logger.info("engine %s refused a grammar: %s", self.spec.model_id, exc)
                    job.handle.emit(exc)
                    self._leave(job)
                except Exception as exc:
                    logger.exception("engine %s could not start a job", self.spec.model_id)
                    job.handle.emit(exc if isinstance(exc, EngineError) else EngineError(str(exc)))
                    self._leave(job)

    def _wake_deferred(self) -> None:
        """Wake the consumers of the events emitted since the last call."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            wake_all(deferred)

    def _leave(self, job: GenerateJob | EmbedJob) -> None:
        """A job has ended (any way): it no longer counts against its owner."""
        with self._cond:
            if isinstance(job, GenerateJob):
                self._in_flight -= 1
            if job.owner is not None:
                left = self._owners.get(job.owner, 0) - 1
                if left > 0:
                    self._owners[job.owner] = left
                else:
                    self._owners.pop(job.owner, None)

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
        self._kv = KVCells(llama_cpp, self._ctx)
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        self._free_slots = list(range(self.n_parallel))
        self._prefix = PrefixCache(
            self._kv,
            list(range(self.n_parallel, n_seq)),
            # Through the engine's own method, which counts copied cells.
            copy=lambda src, dst: self._copy_seq(src, dst),
            n_swa=llama_cpp.llama_model_n_swa(model),
            counters=self._counters,
        )
        self._vocab = self._llm._model.vocab
        self._lib = llama_cpp
        self.n_vocab = self._llm.n_vocab()
        self.n_embd = self._llm.n_embd()
        self._embedder = Embedder(self.spec, self.n_embd)
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
        closed = EngineClosed(f"model {self.spec.model_id} was unloaded")
        for seq in list(self._active):
            seq.job.handle.emit(closed)
            seq.sampler.close()
        self._active.clear()
        for job in self._embedding:
            job.handle.emit(closed)
        self._embedding.clear()
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self._lib.llama_free(self._ctx)
            self._ctx = self._kv = None
        if self._embedder is not None:
            self._embedder.close()
        with self._grammar_lock:
            if self._llm is not None:
                with contextlib.suppress(Exception):
                    self._llm.close()
            self._llm = self._embedder = None

    # -- admission: sequence ids, n>1 sharing and the prefix cache ----------------
    def _admit(self, job: GenerateJob) -> None:
        prompt = job.prompt_tokens
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.spec.n_ctx:
            raise EngineError(f"the prompt does not fit the context ({self.spec.n_ctx} tokens)")
        sampler = Sampler(
            job.params, vocab=self._vocab, n_vocab=self.n_vocab, n_ctx=self.spec.n_ctx
        )
        seq = Seq(job, self._take_slot(), sampler, list(prompt))
        self._kv.clear(seq.seq_id)
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
        while self._free_slots and self._active:
            hole = min(self._free_slots)
            top = self._active[-1]
            if top.seq_id < hole:
                return
            if not self._copy_seq(top.seq_id, hole):
                return  # it stays where it is: one more pass per step, still correct
            self._kv.clear(top.seq_id)
            self._free_slots.remove(hole)
            self._free_slots.append(top.seq_id)
            top.seq_id = hole
            self._active.sort(key=_by_seq_id)
            self._counters["sequences_moved"] += 1

    def _copy_seq(self, src: int, dst: int) -> bool:
        """Give the empty sequence `dst` a copy of the cells of `src`; False if it failed."""
        if not self._kv.copy(src, dst):
            logger.error("engine %s could not copy sequence %d to %d", self.spec.model_id, src, dst)
            return False
        self._counters["kv_cells_copied"] += self._kv.cells(dst)
        return True

    def _reuse_prefix(self, seq: Seq) -> None:
        """Start `seq` from the prefix cache entry sharing the longest prefix with its prompt."""
        hit = self._prefix.reuse(seq.tokens, seq.seq_id)
        if hit is not None:
            seq.n_past, logits = hit
            if logits is not None:
                seq.prompt_logits = logits

    def _retire(self, seq: Seq) -> None:
        """Free a finished sequence; its KV cells become a prefix cache entry."""
        seq.sampler.close()
        self._counters["grammar_full_passes"] += seq.sampler.grammar_full_passes
        self._counters["lazy_grammars"] += seq.sampler.lazy
        self._counters["lazy_grammars_triggered"] += seq.sampler.triggered
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
        if seq.leader is None and len(kept) >= MIN_PREFIX:
            logits = seq.prompt_logits if len(kept) >= seq.prompt_len else None
            self._prefix.store(seq.seq_id, kept, seq.prompt_len, logits)
        self._kv.clear(seq.seq_id)
        self._free_slots.append(seq.seq_id)

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
        plan: list[tuple[Seq, int, bool]] = []  # (sequence, tokens, wants logits)
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
        rows: list[Seq] = []
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
                seq.prompt_logits = logits_row(self._ctx, seq.row, self.n_vocab).copy()
                self._prompt_done(seq, seq.row)
            else:
                self._sample(seq, seq.row)

    def _prompt_done(self, seq: Seq, row: int, stored: np.ndarray | None = None) -> None:
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
                self._kv.clear(seq.seq_id)
                seq.n_past = 0
                self._retire(seq)

    def _sample(self, seq: Seq, row: int, stored: np.ndarray | None = None) -> None:
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
        emit, seq.held, stop = split_stop(text, tuple(s for s in params.stop if s))
        if emit or (seq.pending_logprobs and not seq.held):
            handle.emit(TextDelta(emit, seq.pending_logprobs, seq.unsent), self._deferred)
            seq.pending_logprobs = []
            seq.unsent = 0
        if stop is not None:
            self._finish(seq, "stop", stop)
        elif seq.completion_tokens >= params.max_tokens or len(seq.tokens) >= self.spec.n_ctx:
            self._finish(seq, "length")

    def _finish(self, seq: Seq, reason: str, stop: str | None = None) -> None:
        handle = seq.job.handle
        if reason != "cancelled":
            tail = seq.held + seq.decoder.decode(b"", final=True)
            if tail or seq.pending_logprobs or seq.unsent:
                handle.emit(TextDelta(tail, seq.pending_logprobs, seq.unsent))
        # Freed before the caller hears of the end: stats() read after a
        # request finished no longer counts its sequence.
        self._retire(seq)
        self._snapshot_cells()
        handle.emit(Finished(reason, seq.prompt_len, seq.completion_tokens, stop))

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llm.detokenize([token])
        return piece

    def _snapshot_cells(self) -> None:
        """Cells held per llama.cpp itself, read here: only this thread may touch the context."""
        if self._kv is None:
            return
        cells = self._kv.cells
        active = sum(cells(s.seq_id) for s in self._active)
        cached = sum(cells(i) for i in self._prefix.seq_ids())
        free = sum(cells(i) for i in (*self._free_slots, *self._prefix.free_ids))
        with self._cond:
            self._snapshot = {
                "kv_cells_used": active + cached + free,
                "kv_cells_active": active,
                "kv_cells_cached": cached,
            }

    def _token_logprob(
        self, token: int, piece: bytes, top_n: int, row: int, stored: np.ndarray | None = None
    ) -> TokenLogprob:
        logits = logits_row(self._ctx, row, self.n_vocab) if stored is None else stored
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
    def _embed_step(self) -> None:
        """One embedding batch: the next inputs of the jobs under way, oldest first.

        Inputs of several requests share a batch. A cancelled job stops here,
        before its next batch.
        """
        for job in [j for j in self._embedding if j.handle.cancelled]:
            self._embedding.remove(job)
            self._counters["embedding_jobs_cancelled"] += 1
            job.handle.emit(Finished("cancelled", 0, 0))
            self._leave(job)
        batch: list[list[int]] = []
        owners: list[EmbedJob] = []
        try:
            n_batch, n_seq_max = self._embedder.limits()
            if self._active:
                # Streams are waiting on this step: a batch as long as a decode
                # batch at most (a longer input still goes, alone).
                n_batch = min(n_batch, self.spec.n_batch)
            n_tokens = 0
            for job in self._embedding:
                for tokens in job.inputs[job.done :]:
                    if batch and (n_tokens + len(tokens) > n_batch or len(batch) >= n_seq_max):
                        break
                    batch.append(tokens)
                    owners.append(job)
                    n_tokens += len(tokens)
                else:
                    continue
                break
            vectors = self._embedder.run(batch) if batch else []
        except Exception as exc:
            logger.exception("engine %s failed an embedding batch", self.spec.model_id)
            failed = {id(job) for job in owners} or {id(job) for job in self._embedding}
            for job in [j for j in self._embedding if id(j) in failed]:
                self._embedding.remove(job)
                job.handle.emit(EngineError(str(exc)))
                self._leave(job)
            return
        if batch:
            self._counters["embedding_batches"] += 1
        for job, vector in zip(owners, vectors, strict=True):
            job.vectors.append(vector)
        for job in [j for j in self._embedding if j.done == len(j.inputs)]:
            self._embedding.remove(job)
            job.handle.emit(
                EmbeddingResult(job.vectors, sum(len(t) for t in job.inputs)), self._deferred
            )
            self._leave(job)
        self._wake_deferred()


def _lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's nice value (Linux: per thread)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # a sandbox that forbids it: run at the process's own
        logger.warning("could not lower the engine thread's priority: %s", exc)


def fair_pick(
    waiting: list[GenerateJob], running: list[str | None], room: int
) -> list[GenerateJob]:
    """Up to `room` of the waiting jobs: each in turn goes to the owner running the
    fewest jobs (counting those picked here), the earliest job first among equals.

    One tenant's burst then waits behind others' single requests instead of
    holding every free sequence; jobs without an owner share one turn.
    """
    if room <= 0 or not waiting:
        return []
    if room >= len(waiting):
        return list(waiting)
    load: dict[str | None, int] = {}
    for owner in running:
        load[owner] = load.get(owner, 0) + 1
    queues: dict[str | None, deque[tuple[int, GenerateJob]]] = {}
    for position, job in enumerate(waiting):
        queues.setdefault(job.owner, deque()).append((position, job))
    picked: list[tuple[int, GenerateJob]] = []
    while len(picked) < room:
        owner = min(queues, key=lambda o: (load.get(o, 0), queues[o][0][0]))
        picked.append(queues[owner].popleft())
        if not queues[owner]:
            del queues[owner]
        load[owner] = load.get(owner, 0) + 1
    picked.sort(key=lambda item: item[0])
    return [job for _, job in picked]


def _by_seq_id(seq: Seq) -> int:
    return seq.seq_id
