"""A model worker: one process, one model, one engine, serving every gateway.

Started by the supervisor as `python -m inference.workers.worker CONFIG_JSON`.
It loads no Django: only the engine, a ROUTER socket gateways submit to, and
a PUSH socket to the supervisor for heartbeats (state, stats, step progress).

The engine's thread wakes this process's event loop once per step (wake_all);
each job's pump moves its events into a per-gateway outbox, and one flush per
loop pass sends each gateway one frame holding that step's events of all its
jobs. A gateway that is gone (ROUTER_MANDATORY says so) has its jobs cancelled.

SIGTERM: stop taking jobs, finish the queued ones (the engine's close), exit.
If the supervisor dies, the worker exits too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict

import zmq
import zmq.asyncio

from inference.engine import EngineError, Handle, LlamaEngine
from inference.workers.protocol import (
    event_to_wire,
    pack,
    params_from_wire,
    spec_from_wire,
    unpack,
)

logger = logging.getLogger("llmsite.worker")

HEARTBEAT_S = 0.25


class Worker:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.spec = spec_from_wire(config["spec"])
        self.engine = LlamaEngine(self.spec)
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind(config["address"])
        # Sends go through a plain (synchronous) view of the same socket, from this
        # loop's thread: a send that fails raises here instead of into a Future.
        self.sender: zmq.Socket = zmq.Socket.shadow(self.router.underlying)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, 4)
        self.push.connect(config["heartbeat"])
        self.jobs: dict[tuple[bytes, int], Handle] = {}
        self.outbox: dict[bytes, list] = defaultdict(list)
        self.flush_pending = False
        self.stopping = False
        self.parent = os.getppid()
        self.tasks: set[asyncio.Task] = set()

    # -- events out ---------------------------------------------------------------
    def send(self, ident: bytes, item: list) -> None:
        self.outbox[ident].append(item)
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        outbox, self.outbox = self.outbox, defaultdict(list)
        for ident, items in outbox.items():
            try:
                self.sender.send_multipart([ident, pack(["events", items])], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                # That gateway is gone: nobody reads its jobs' tokens any more.
                for (owner_ident, _), handle in list(self.jobs.items()):
                    if owner_ident == ident:
                        handle.cancel()

    async def pump(self, ident: bytes, job_id: int, handle) -> None:
        try:
            async for event in handle:
                self.send(ident, [job_id, *event_to_wire(event)])
        except Exception as exc:
            self.send(ident, [job_id, *event_to_wire(exc)])
        finally:
            self.jobs.pop((ident, job_id), None)

    # -- requests in ----------------------------------------------------------------
    def handle(self, ident: bytes, message: list) -> None:
        op = message[0]
        if op == "cancel":
            handle = self.jobs.get((ident, message[1]))
            if handle is not None:
                handle.cancel()
            return
        if op == "grammar":
            task = asyncio.ensure_future(self.check_grammar(ident, message[1], message[2]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        job_id = message[1]
        try:
            if self.stopping:
                raise EngineError(f"the worker for {self.spec.model_id} is shutting down")
            if op == "submit":
                _, _, tokens, params, owner, coming = message
                handle = self.engine.submit(
                    tokens, params_from_wire(params), owner=owner, coming=coming, source=ident
                )
            elif op == "embed":
                _, _, inputs, owner = message
                handle = self.engine.submit_embeddings(inputs, owner=owner)
            else:
                raise EngineError(f"unknown request {op!r}")
        except Exception as exc:
            self.send(ident, [job_id, *event_to_wire(exc)])
            return
        self.jobs[(ident, job_id)] = handle
        task = asyncio.ensure_future(self.pump(ident, job_id, handle))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def check_grammar(self, ident: bytes, request_id: int, grammar: str) -> None:
        try:
            await asyncio.to_thread(self.engine.check_grammar, grammar)
            error = None
        except Exception as exc:
            error = event_to_wire(exc)[1:]
        with contextlib.suppress(zmq.ZMQError):
            self.sender.send_multipart(
                [ident, pack(["reply", request_id, error])], flags=zmq.NOBLOCK
            )

    async def receive(self) -> None:
        while True:
            ident, payload = await self.router.recv_multipart()
            try:
                message = unpack(payload)
            except Exception:
                logger.warning("worker %s: undecodable frame dropped", self.spec.model_id)
                continue
            self.handle(ident, message)

    # -- heartbeat --------------------------------------------------------------------
    def view(self) -> dict:
        engine = self.engine
        if engine.load_error is not None:
            state, error = "failed", str(engine.load_error)
        else:
            state, error = ("loaded" if engine.is_ready else "loading"), None
        stats = engine.stats() if engine.is_ready else {}
        progress = stats.get("decode_steps", 0) + stats.get("embedding_batches", 0)
        busy = stats.get("in_flight", 0) + stats.get("queue_depth", 0)
        busy += stats.get("embedding_jobs_active", 0)
        return {
            "model_id": self.spec.model_id,
            "generation": self.config["generation"],
            "pid": os.getpid(),
            "state": state,
            "error": error,
            "stats": stats,
            "progress": progress,
            "busy": busy,
            "time": time.time(),
        }

    async def heartbeat(self) -> None:
        while True:
            if os.getppid() != self.parent:
                logger.error("worker %s: the supervisor is gone; exiting", self.spec.model_id)
                os._exit(1)
            view = await asyncio.to_thread(self.view)
            with contextlib.suppress(zmq.ZMQError):
                self.push.send(pack(view), flags=zmq.NOBLOCK)
            await asyncio.sleep(HEARTBEAT_S)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        tasks = [asyncio.ensure_future(self.receive()), asyncio.ensure_future(self.heartbeat())]
        await stop.wait()
        self.stopping = True
        # Finish what is queued and running; their last events still go out.
        await asyncio.to_thread(self.engine.close, self.config.get("drain_seconds", 30))
        await asyncio.sleep(0.05)
        self.flush()
        for task in tasks:
            task.cancel()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LLMSITE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    config = json.loads(sys.argv[1])
    worker = Worker(config)
    try:
        asyncio.run(worker.run())
    finally:
        worker.ctx.destroy(linger=0)
    os._exit(0)  # the engine thread is daemonic; nothing else needs tearing down


if __name__ == "__main__":
    main()
