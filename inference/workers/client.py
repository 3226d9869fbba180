"""A gateway process's side of the model workers.

`WorkerRegistry` stands in for the in-process `Registry` when the gateway runs
under `manage.py serve` (LLMSITE_SUPERVISOR names the supervisor's run dir),
and `WorkerEngine` for `LlamaEngine`: the same methods (submit, cancel through
the handle, stats, tokenize, check_grammar), so nothing above the local
backend knows the engine lives in another process.

One thread per gateway process (`WorkerClient`) owns the ZeroMQ sockets: a SUB
socket with every worker's view from the supervisor, and a DEALER socket per
worker generation. Other threads hand it frames through an outbox and a pipe.
Events arrive one frame per worker step and go into the same `Handle` the
in-process engine uses, with one wake-up per event loop per frame.

Tokenizing happens here, on a vocabulary-only copy of the GGUF (no weights):
prompt building is request-path work and must not cost a round trip per
message. Grammars are parsed by the worker, where a parser crash costs only
that worker.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import zmq

from inference.engine import (
    EngineClosed,
    EngineError,
    Handle,
    ModelLoadError,
    ModelSpec,
    SamplingParams,
    wake_all,
)
from inference.engine.gbnf import check_grammar
from inference.workers.protocol import (
    ERRORS,
    WorkerCrashed,
    event_from_wire,
    is_terminal,
    pack,
    params_to_wire,
    spec_from_wire,
    spec_to_wire,
    unpack,
)
from inference.workers.supervisor import addresses

logger = logging.getLogger("llmsite.workers")

RPC_TIMEOUT = 15.0


class WorkerHandle(Handle):
    def __init__(self, engine: WorkerEngine, job_id: int) -> None:
        super().__init__()
        self._engine = engine
        self.job_id = job_id

    def cancel(self) -> None:
        if self.cancelled:
            return
        super().cancel()
        self._engine.client.cancel(self._engine, self.job_id)


class WorkerEngine:
    """One generation of one model's worker, as the gateway sees it."""

    def __init__(self, client: WorkerClient, view: dict) -> None:
        self.client = client
        self.spec: ModelSpec = spec_from_wire(view["spec"])
        self.generation: int = view["generation"]
        self.address: str = view["address"]
        self.n_parallel = max(1, self.spec.n_parallel)
        self.jobs: dict[int, WorkerHandle] = {}
        self._owners: dict[str, int] = {}
        self._job_owner: dict[int, str] = {}
        self.ended: EngineError | None = None
        self._grammars_ok: dict[str, None] = {}

    # -- state, from the supervisor's published view ---------------------------------------
    @property
    def view(self) -> dict | None:
        view = self.client.views.get(self.spec.model_id)
        return view if view is not None and view["generation"] == self.generation else None

    @property
    def is_ready(self) -> bool:
        view = self.view
        return view is not None and view["state"] == "loaded" and self.ended is None

    @property
    def load_error(self) -> ModelLoadError | None:
        view = self.view
        if view is not None and view["state"] == "failed":
            return ModelLoadError(view["error"] or "the model failed to load")
        return None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the worker has loaded the model; ModelLoadError if it could not.

        EngineClosed when this generation is over (unloaded, or crashed and
        replaced): the caller asks the registry again.
        """
        with self.client.changed:
            ok = self.client.changed.wait_for(self._settled, timeout)
        if not ok:
            return False
        error = self.load_error
        if error is not None:
            raise error
        if not self.is_ready:
            raise EngineClosed(f"the worker for {self.spec.model_id} was replaced")
        return True

    def _settled(self) -> bool:
        current = self.client.views.get(self.spec.model_id)
        if self.ended is not None or current is None:
            return True
        if current["generation"] != self.generation:
            return True
        return current["state"] in ("loaded", "failed")

    def close(self, timeout: float = 30) -> None:
        """The supervisor owns the worker: unloading goes through the registry."""

    @property
    def stats_view(self) -> dict:
        view = self.view
        return dict(view["stats"]) if view is not None else {}

    @property
    def queue_depth(self) -> int:
        return int(self.stats_view.get("queue_depth", 0))

    @property
    def in_flight(self) -> int:
        return int(self.stats_view.get("in_flight", 0))

    def stats(self) -> dict:
        view = self.view or {}
        return {
            **self.stats_view,
            "worker_pid": view.get("pid") or 0,
            "worker_generation": self.generation,
            "worker_crashes": view.get("crashes", 0),
            "worker_restarts": view.get("restarts", 0),
        }

    def owner_load(self, owner: str) -> int:
        """This gateway process's jobs of `owner` still running."""
        return self._owners.get(owner, 0)

    # -- tokenizer (a vocabulary-only llama.cpp model in this process) -----------------------
    @property
    def _llm(self):
        return self.client.vocabulary(self.spec.path)

    @property
    def n_vocab(self) -> int:
        return self._llm.n_vocab()

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    def check_grammar(self, grammar: str) -> None:
        check_grammar(grammar)
        if grammar in self._grammars_ok:
            return
        error: list | None = self.client.request(self, "grammar", grammar)  # type: ignore[assignment]
        if error is not None:
            raise ERRORS.get(error[0], EngineError)(error[1])
        self._grammars_ok[grammar] = None
        while len(self._grammars_ok) > 16:
            del self._grammars_ok[next(iter(self._grammars_ok))]

    # -- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        *,
        owner: str | None = None,
        coming: int = 0,
    ) -> Handle:
        # The worker tells gateway processes apart by their sockets: no `source`.
        if params.grammar:
            self.check_grammar(params.grammar)
        return self.client.submit(
            self, "submit", [list(prompt_tokens), params_to_wire(params), owner, coming], owner
        )

    def submit_embeddings(self, inputs: list[list[int]], *, owner: str | None = None) -> Handle:
        if not self.spec.embeddings:
            raise EngineError(f"model {self.spec.model_id} does not serve embeddings")
        return self.client.submit(self, "embed", [[list(t) for t in inputs], owner], owner)

    def _count(self, job_id: int, owner: str | None) -> None:
        if owner is not None:
            self._job_owner[job_id] = owner
            self._owners[owner] = self._owners.get(owner, 0) + 1

    def _uncount(self, job_id: int) -> None:
        owner = self._job_owner.pop(job_id, None)
        if owner is not None:
            left = self._owners.get(owner, 0) - 1
            if left > 0:
                self._owners[owner] = left
            else:
                self._owners.pop(owner, None)


class WorkerClient:
    """This process's sockets to the supervisor and the workers, run by one thread."""

    def __init__(self, run_dir: str) -> None:
        self.addresses = addresses(Path(run_dir))
        self.ctx = zmq.Context()
        self.views: dict[str, dict] = {}
        self.engines: dict[tuple[str, int], WorkerEngine] = {}
        self.changed = threading.Condition()
        self.draining = False
        self._jobs: dict[int, tuple[WorkerEngine, WorkerHandle]] = {}
        self._replies: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._outbox: deque[tuple[str, bytes | None]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._vocab: dict[Path, object] = {}
        self._vocab_lock = threading.Lock()
        self._sub = self.ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(self.addresses["events"])
        self._parent = os.getppid()
        state = self.rpc({"op": "state"})
        with self.changed:
            for view in state["workers"].values():
                self._apply(view)
        self.draining = state.get("draining", False)
        self._thread = threading.Thread(target=self._run, name="worker-client", daemon=True)
        self._thread.start()

    # -- control requests to the supervisor ---------------------------------------------------
    def rpc(self, request: dict, timeout: float = RPC_TIMEOUT) -> dict:
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        try:
            sock.connect(self.addresses["control"])
            sock.send(pack(request))
            try:
                reply = unpack(sock.recv())
            except zmq.Again:
                raise EngineError(
                    f"the model supervisor did not answer within {timeout} s"
                ) from None
        finally:
            sock.close()
        view = reply.get("worker")
        if view is not None:
            with self.changed:
                self._apply(view)
        return reply

    def engine(self, view: dict) -> WorkerEngine:
        key = (view["model_id"], view["generation"])
        with self._lock:
            engine = self.engines.get(key)
            if engine is None:
                engine = self.engines[key] = WorkerEngine(self, view)
        return engine

    def current(self, model_id: str) -> WorkerEngine | None:
        view = self.views.get(model_id)
        return None if view is None else self.engine(view)

    def vocabulary(self, path: Path):
        llm = self._vocab.get(path)
        if llm is None:
            with self._vocab_lock:
                llm = self._vocab.get(path)
                if llm is None:
                    from llama_cpp import Llama

                    llm = Llama(str(path), vocab_only=True, n_ctx=64, verbose=False)
                    self._vocab[path] = llm
        return llm

    # -- jobs (any thread) --------------------------------------------------------------------
    def submit(self, engine: WorkerEngine, op: str, args: list, owner: str | None) -> Handle:
        job_id = next(self._ids)
        handle = WorkerHandle(engine, job_id)
        with self._lock:
            if engine.ended is not None:
                raise EngineClosed(f"the worker for {engine.spec.model_id} is gone: {engine.ended}")
            self._jobs[job_id] = (engine, handle)
            engine.jobs[job_id] = handle
            engine._count(job_id, owner)
        self._send(engine.address, pack([op, job_id, *args]))
        return handle

    def cancel(self, engine: WorkerEngine, job_id: int) -> None:
        with self._lock:
            live = job_id in self._jobs
        if live:
            self._send(engine.address, pack(["cancel", job_id]))

    def request(self, engine: WorkerEngine, op: str, *args) -> object:
        request_id = next(self._ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._replies[request_id] = future
        self._send(engine.address, pack([op, request_id, *args]))
        try:
            return future.result(RPC_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise WorkerCrashed(
                f"the worker for {engine.spec.model_id} did not answer within {RPC_TIMEOUT} s"
            ) from None
        finally:
            with self._lock:
                self._replies.pop(request_id, None)

    def _send(self, address: str, frame: bytes | None) -> None:
        self._outbox.append((address, frame))
        os.write(self._wake_w, b"x")

    # -- the thread that owns the sockets ---------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        dealers: dict[str, zmq.Socket] = {}
        by_socket: dict[zmq.Socket, str] = {}
        while True:
            try:
                ready = poller.poll(1000)
            except zmq.ZMQError:
                continue
            for sock, _ in ready:
                if sock == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 65536)
                elif sock is self._sub:
                    self._read_views()
                else:
                    self._read_worker(sock)
            while self._outbox:
                address, frame = self._outbox.popleft()
                dealer = dealers.get(address)
                if frame is None:  # that generation is over
                    if dealer is not None:
                        poller.unregister(dealer)
                        by_socket.pop(dealers.pop(address))
                        dealer.close(linger=0)
                    continue
                if dealer is None:
                    dealer = self.ctx.socket(zmq.DEALER)
                    for option, value in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, 0)):
                        dealer.setsockopt(option, value)
                    dealer.connect(address)
                    dealers[address] = dealer
                    by_socket[dealer] = address
                    poller.register(dealer, zmq.POLLIN)
                dealer.send(frame)
            if self._parent != 1 and os.getppid() != self._parent:
                logger.error("the llmsite supervisor is gone; this gateway exits")
                os._exit(1)

    def _read_views(self) -> None:
        while True:
            try:
                message = unpack(self._sub.recv(flags=zmq.NOBLOCK))
            except zmq.Again:
                return
            if message[0] == "drain":
                self.draining = True
            elif message[0] == "worker":
                with self.changed:
                    self._apply(message[1])

    def _apply(self, view: dict) -> None:
        """Take a worker's newer view; end the generations it supersedes. Holds `changed`."""
        model_id = view["model_id"]
        known = self.views.get(model_id)
        if known is not None and view["generation"] < known["generation"]:
            return
        if view["state"] == "stopped":
            self.views.pop(model_id, None)
        else:
            self.views[model_id] = view
        over = view["state"] in ("crashed", "stopped", "failed")
        with self._lock:
            engines = [
                e
                for (mid, gen), e in self.engines.items()
                if mid == model_id
                and e.ended is None
                and (gen < view["generation"] or (over and gen == view["generation"]))
            ]
        for engine in engines:
            self._end(engine, view)
        self.changed.notify_all()

    def _end(self, engine: WorkerEngine, view: dict) -> None:
        if view["state"] == "stopped" and view["generation"] == engine.generation:
            reason = f"the model {engine.spec.model_id} was unloaded"
            error: EngineError = EngineClosed(reason)
        else:
            reason = view.get("error") or "it was replaced"
            error = WorkerCrashed(f"the worker for {engine.spec.model_id} stopped: {reason}")
        with self._lock:
            engine.ended = error
            self.engines.pop((engine.spec.model_id, engine.generation), None)
            jobs = list(engine.jobs.items())
            for job_id, _ in jobs:
                self._jobs.pop(job_id, None)
                engine._uncount(job_id)
            engine.jobs.clear()
        deferred: list = []
        for _, handle in jobs:
            handle.emit(error, deferred)
        wake_all(deferred)
        self._send(engine.address, None)
        if jobs:
            logger.warning("%d request(s) on %s ended: %s", len(jobs), engine.spec.model_id, reason)

    def _read_worker(self, sock: zmq.Socket) -> None:
        deferred: list = []
        while True:
            try:
                message = unpack(sock.recv(flags=zmq.NOBLOCK))
            except zmq.Again:
                break
            if message[0] == "reply":
                with self._lock:
                    future = self._replies.get(message[1])
                if future is not None and not future.done():
                    future.set_result(message[2])
                continue
            for job_id, kind, *payload in message[1]:
                event = event_from_wire(kind, *payload)
                with self._lock:
                    job = self._jobs.get(job_id)
                    if job is None:
                        continue
                    engine, handle = job
                    if is_terminal(event):
                        del self._jobs[job_id]
                        engine.jobs.pop(job_id, None)
                        engine._uncount(job_id)
                handle.emit(event, deferred)
        wake_all(deferred)


class WorkerRegistry:
    """The registry's interface, answered by the supervisor and its workers."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._client: WorkerClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> WorkerClient:
        """Connected on first use (not at import: a command may never need it)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = WorkerClient(self.run_dir)
        return self._client

    @property
    def draining(self) -> bool:
        return self.client.draining

    def engine_for(self, model) -> WorkerEngine:
        from inference.registry import MemoryBudgetExceeded, spec_for

        spec = spec_for(model)
        reply = self.client.rpc(
            {"op": "load", "spec": spec_to_wire(spec), "idle_limit": model.idle_unload_seconds}
        )
        if "error" in reply:
            if reply.get("kind") == "memory_budget":
                raise MemoryBudgetExceeded(reply["error"])
            raise EngineError(reply["error"])
        engine = self.client.engine(reply["worker"])
        engine.n_vocab  # noqa: B018 - loads the tokenizer now (off the event loop), not mid-request
        return engine

    def ready_engine(self, model) -> WorkerEngine | None:
        from inference.registry import _matches

        engine = self.client.current(model.model_id)
        if engine is not None and engine.is_ready and _matches(engine.spec, model):
            return engine
        return None

    def get(self, model_id: str) -> WorkerEngine | None:
        return self.client.current(model_id)

    def get_loaded(self, model_id: str) -> WorkerEngine | None:
        engine = self.client.current(model_id)
        return engine if engine is not None and engine.is_ready else None

    def unload(self, model_id: str) -> bool:
        return bool(self.client.rpc({"op": "unload", "model_id": model_id}).get("unloaded"))

    def loaded_ids(self) -> list[str]:
        return [mid for mid, view in list(self.client.views.items()) if view["state"] == "loaded"]

    def engine_states(self) -> dict[str, str]:
        states = {"loaded": "loaded", "failed": "failed"}
        return {
            mid: states.get(view["state"], "loading")
            for mid, view in list(self.client.views.items())
        }

    def idle_seconds(self, model_id: str) -> float | None:
        view = self.client.views.get(model_id)
        return None if view is None else float(view.get("idle_seconds", 0.0))

    def reap_idle(self, now: float | None = None) -> list[str]:
        """The supervisor reaps idle workers itself."""
        return []

    def workers(self) -> dict[str, dict]:
        """Each worker's view: state, generation, pid, crashes and restarts."""
        return dict(self.client.views)
