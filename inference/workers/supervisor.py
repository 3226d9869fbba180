"""The supervisor: owns one worker process per loaded local model.

It runs inside `manage.py serve`, which holds the data dir's lock, so there is
exactly one per deployment. Gateways ask it (REQ -> ROUTER, `control`) to load
or unload a model and for the state of all; it publishes every worker's view
(PUB, `events`) whenever it changes and with each heartbeat, so every gateway
process sees the same state and stats without asking.

A worker that exits (crash, SIGKILL, OOM) is published as `crashed` (gateways
end its requests at once), recorded in the audit log and restarted with
exponential backoff. One that stops sending heartbeats, or sends them without
step progress while it has work, for LLMSITE_WORKER_HANG_SECONDS is killed
and handled the same way. One that crashes while loading three times in a row
is marked `failed` until the next load request.

With LLMSITE_MEMORY_BUDGET_MB set, loading a model first stops the least
recently busy idle workers until its GGUF fits. A worker idle past its model's
`idle_unload_seconds` is stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from inference.workers.protocol import pack, unpack

logger = logging.getLogger("llmsite.supervisor")

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker up this long has its backoff reset
LOAD_CRASHES_FATAL = 3
STOP_GRACE = 10.0


def addresses(run_dir: Path) -> dict[str, str]:
    return {
        "control": f"ipc://{run_dir}/control",
        "events": f"ipc://{run_dir}/events",
        "heartbeat": f"ipc://{run_dir}/heartbeat",
    }


@dataclass
class WorkerEntry:
    spec: dict
    model_id: str
    generation: int = 0
    process: subprocess.Popen | None = None
    address: str = ""
    state: str = "stopped"  # loading, loaded, failed, crashed, stopped
    error: str | None = None
    stats: dict = field(default_factory=dict)
    pid: int | None = None
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    progress: int = -1
    progress_at: float = 0.0
    busy: int = 0
    last_busy: float = field(default_factory=time.monotonic)
    idle_limit: int | None = None
    crashes: int = 0
    restarts: int = 0
    load_crashes: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    published_at: float = 0.0

    def view(self) -> dict:
        return {
            "model_id": self.model_id,
            "generation": self.generation,
            "state": self.state,
            "error": self.error,
            "address": self.address,
            "pid": self.pid,
            "spec": self.spec,
            "stats": self.stats,
            "crashes": self.crashes,
            "restarts": self.restarts,
            "idle_seconds": max(0.0, time.monotonic() - self.last_busy) if not self.busy else 0.0,
        }


class Supervisor:
    def __init__(
        self,
        run_dir: Path,
        *,
        hang_seconds: float = 30.0,
        memory_budget_mb: int = 0,
        on_event=None,
    ) -> None:
        self.run_dir = run_dir
        self.addresses = addresses(run_dir)
        self.hang_seconds = hang_seconds
        self.memory_budget = memory_budget_mb * 1024 * 1024
        self.on_event = on_event or (lambda action, entry, data: None)
        self.workers: dict[str, WorkerEntry] = {}
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(self.addresses["control"])
        self.events = self.ctx.socket(zmq.PUB)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.setsockopt(zmq.SNDHWM, 0)
        self.events.bind(self.addresses["events"])
        self.heartbeats = self.ctx.socket(zmq.PULL)
        self.heartbeats.setsockopt(zmq.LINGER, 0)
        self.heartbeats.bind(self.addresses["heartbeat"])
        self.draining = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._calls: list = []

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Tell gateways to take no new requests (they answer 503 while draining)."""
        self._call(lambda: self._drain())

    def _drain(self) -> None:
        self.draining = True
        self.events.send(pack(["drain"]))

    def idle(self) -> bool:
        """Whether no worker has work queued or running (from the last heartbeats)."""
        return all(entry.busy == 0 for entry in list(self.workers.values()))

    def stop(self) -> None:
        """Stop every worker (each finishes its queued work first), then the loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_GRACE + 5)
        self.ctx.destroy(linger=0)

    def _call(self, fn) -> None:
        """Run `fn` on the loop's thread, which owns the sockets."""
        self._calls.append(fn)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.heartbeats, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(50))
            while self._calls:
                self._calls.pop(0)()
            if self.heartbeats in ready:
                self._read_heartbeats()
            if self.control in ready:
                self._read_control()
            self._watch()
        for entry in self.workers.values():
            self._stop_worker(entry, publish=False)

    # -- control requests -------------------------------------------------------------------
    def _read_control(self) -> None:
        while True:
            try:
                ident, empty, payload = self.control.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = self._answer(unpack(payload))
            except Exception as exc:
                logger.exception("control request failed")
                reply = {"error": str(exc)}
            self.control.send_multipart([ident, empty, pack(reply)])

    def _answer(self, request: dict) -> dict:
        op = request.get("op")
        if op == "load":
            return self._load(request["spec"], request.get("idle_limit"))
        if op == "unload":
            entry = self.workers.pop(request["model_id"], None)
            if entry is None:
                return {"unloaded": False}
            self._stop_worker(entry, publish=True)
            return {"unloaded": True}
        if op == "state":
            return {
                "workers": {mid: e.view() for mid, e in self.workers.items()},
                "draining": self.draining,
            }
        return {"error": f"unknown op {op!r}"}

    def _load(self, spec: dict, idle_limit: int | None) -> dict:
        model_id = spec["model_id"]
        entry = self.workers.get(model_id)
        if entry is not None:
            entry.idle_limit = idle_limit
            entry.last_busy = time.monotonic()
            if entry.spec == spec and entry.state != "failed":
                return {"worker": entry.view()}
            # New settings (a reload) or a failed load: a fresh generation.
            self._stop_worker(entry, publish=False)
        refused = self._make_room(model_id, _file_size(spec["path"]))
        if refused:
            return {"error": refused, "kind": "memory_budget"}
        entry = WorkerEntry(spec=spec, model_id=model_id, idle_limit=idle_limit)
        self.workers[model_id] = entry
        self._spawn(entry)
        return {"worker": entry.view()}

    def _make_room(self, model_id: str, needed: int) -> str | None:
        if not self.memory_budget:
            return None
        others = {mid: e for mid, e in self.workers.items() if mid != model_id}
        used = sum(_file_size(e.spec["path"]) for e in others.values())
        for mid in sorted(others, key=lambda m: others[m].last_busy):
            if used + needed <= self.memory_budget:
                break
            if others[mid].busy:
                continue
            used -= _file_size(others[mid].spec["path"])
            logger.info("unloading %s to make room for %s (memory budget)", mid, model_id)
            self._stop_worker(self.workers.pop(mid), publish=True)
        if used + needed > self.memory_budget:
            return (
                f"it needs {needed // 2**20} MiB and busy models hold {used // 2**20} of the "
                f"{self.memory_budget // 2**20} MiB budget"
            )
        return None

    # -- workers --------------------------------------------------------------------------
    def _spawn(self, entry: WorkerEntry) -> None:
        self._generation += 1
        entry.generation = self._generation
        entry.address = f"ipc://{self.run_dir}/w{entry.generation}"
        config = {
            "spec": entry.spec,
            "address": entry.address,
            "heartbeat": self.addresses["heartbeat"],
            "generation": entry.generation,
        }
        entry.process = subprocess.Popen(
            [sys.executable, "-m", "inference.workers.worker", json.dumps(config)],
            cwd=str(Path(__file__).resolve().parent.parent.parent),
        )
        entry.pid = entry.process.pid
        entry.state, entry.error, entry.stats = "loading", None, {}
        entry.started_at = entry.last_heartbeat = entry.progress_at = time.monotonic()
        entry.progress, entry.busy, entry.restart_at = -1, 0, None
        logger.info(
            "worker %s started (generation %d, pid %d)", entry.model_id, entry.generation, entry.pid
        )
        self._publish(entry)

    def _stop_worker(self, entry: WorkerEntry, *, publish: bool) -> None:
        process = entry.process
        entry.process = None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        entry.state = "stopped"
        if publish:
            self._publish(entry)

    def _read_heartbeats(self) -> None:
        now = time.monotonic()
        while True:
            try:
                view = unpack(self.heartbeats.recv(flags=zmq.NOBLOCK))
            except zmq.Again:
                return
            entry = self.workers.get(view["model_id"])
            if entry is None or entry.generation != view["generation"] or entry.process is None:
                continue
            entry.last_heartbeat = now
            if view["progress"] != entry.progress or not entry.busy:
                # Idle time is no lack of progress: the clock starts with work.
                entry.progress, entry.progress_at = view["progress"], now
            entry.busy = view["busy"]
            if entry.busy:
                entry.last_busy = now
            entry.stats = view["stats"]
            changed = view["state"] != entry.state
            entry.state, entry.error = view["state"], view["error"]
            if changed and entry.state == "loaded":
                entry.load_crashes = 0
            if changed or now - entry.published_at > 0.5:
                self._publish(entry)

    def _watch(self) -> None:
        now = time.monotonic()
        for entry in list(self.workers.values()):
            process = entry.process
            if process is not None:
                code = process.poll()
                if code is not None:
                    self._crashed(entry, _describe_exit(code))
                    continue
                silent = now - entry.last_heartbeat
                stuck = now - entry.progress_at if entry.busy else 0.0
                if silent > self.hang_seconds or stuck > self.hang_seconds:
                    what = "sent no heartbeat" if silent > self.hang_seconds else "made no progress"
                    reason = f"hung: {what} for {max(silent, stuck):.1f} s"
                    process.kill()
                    process.wait()
                    self._crashed(entry, reason)
                    continue
                if (
                    entry.idle_limit
                    and not entry.busy
                    and entry.state == "loaded"
                    and now - entry.last_busy > entry.idle_limit
                ):
                    logger.info("unloading %s: idle for longer than its limit", entry.model_id)
                    self._stop_worker(self.workers.pop(entry.model_id), publish=True)
                continue
            if entry.restart_at is not None and now >= entry.restart_at and not self.draining:
                entry.restarts += 1
                self._spawn(entry)
                self.on_event("model.worker_restarted", entry, {"generation": entry.generation})

    def _crashed(self, entry: WorkerEntry, reason: str) -> None:
        now = time.monotonic()
        was_loading = entry.state == "loading"
        entry.process = None
        entry.crashes += 1
        logger.error(
            "worker %s (generation %d, pid %s) %s",
            entry.model_id,
            entry.generation,
            entry.pid,
            reason,
        )
        if now - entry.started_at > STABLE_AFTER:
            entry.backoff = BACKOFF_FIRST
        entry.load_crashes = entry.load_crashes + 1 if was_loading else 0
        if entry.load_crashes >= LOAD_CRASHES_FATAL:
            entry.state, entry.error = "failed", f"the worker crashed while loading: {reason}"
            entry.restart_at = None
        else:
            entry.state, entry.error = "crashed", reason
            entry.restart_at = now + entry.backoff
            entry.backoff = min(entry.backoff * 2, BACKOFF_MAX)
        self._publish(entry)
        self.on_event("model.worker_crashed", entry, {"reason": reason})

    def _publish(self, entry: WorkerEntry) -> None:
        entry.published_at = time.monotonic()
        self.events.send(pack(["worker", entry.view()]))


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
