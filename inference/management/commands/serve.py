"""`manage.py serve`: the supervisor, its model workers and N gateway processes.

What `make run` starts. It holds an exclusive lock on the data dir (a second
`serve` on the same data dir fails at once, naming the holder), runs the
supervisor that owns one worker process per local model, binds the port once
and starts LLMSITE_WEB_PROCESSES daphne processes that accept on that shared
socket (daphne's `--fd`; the kernel spreads connections across them).

SIGTERM or Ctrl-C drains: gateways answer new requests with a 503, requests in
flight get up to LLMSITE_DRAIN_SECONDS to finish, then the gateways stop and
the workers finish whatever is still queued and stop. A gateway that exits on
its own is restarted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.workers.supervisor import Supervisor, WorkerEntry


def lock_path() -> Path:
    return Path(settings.DATA_DIR) / "serve.lock"


def running_supervisor() -> dict | None:
    """The `serve` holding this data dir's lock: its pid and run dir, or None."""
    try:
        info = json.loads(lock_path().read_text())
    except (OSError, ValueError):
        return None
    with open(lock_path(), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return info  # held: that serve is alive
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _audit(action: str, entry: WorkerEntry, data: dict) -> None:
    from accounts.services import SYSTEM, audit_record

    try:
        audit_record(
            actor=SYSTEM,
            action=action,
            data={
                "model": entry.model_id,
                "generation": entry.generation,
                "pid": entry.pid,
                **data,
            },
        )
    except Exception as exc:  # the database being down must not stop the supervisor
        sys.stderr.write(f"audit record {action} failed: {exc}\n")


class Command(BaseCommand):
    help = "Serve llmsite: model workers under a supervisor, and N gateway processes on one port."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.LLMSITE_WEB_PROCESSES,
            help="gateway processes (LLMSITE_WEB_PROCESSES)",
        )

    def handle(self, *args, **options) -> None:
        processes = options["processes"]
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        lock = open(lock_path(), "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = running_supervisor() or {}
            raise CommandError(
                f"another `manage.py serve` (pid {holder.get('pid', '?')}) is serving the data "
                f"dir {settings.DATA_DIR}; stop it first, or give this one its own "
                "LLMSITE_DATA_DIR"
            ) from None
        run_dir = Path(tempfile.mkdtemp(prefix="llmsite-"))  # short: ipc paths are bounded
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "run_dir": str(run_dir)}))
        lock.flush()
        try:
            listener = socket.create_server((options["host"], options["port"]), backlog=1024)
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc
        listener.set_inheritable(True)

        supervisor = Supervisor(
            run_dir,
            hang_seconds=settings.LLMSITE_WORKER_HANG_SECONDS,
            memory_budget_mb=settings.LLMSITE_MEMORY_BUDGET_MB,
            on_event=_audit,
        )
        supervisor.start()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

        env = {**os.environ, "LLMSITE_SUPERVISOR": str(run_dir)}
        command = [
            sys.executable,
            "-m",
            "daphne",
            "--fd",
            str(listener.fileno()),
            "--proxy-headers",
            "llmsite.asgi:application",
        ]

        def start_gateway() -> subprocess.Popen:
            return subprocess.Popen(
                command, env=env, pass_fds=(listener.fileno(),), cwd=settings.BASE_DIR
            )

        gateways = [start_gateway() for _ in range(processes)]
        self.stdout.write(
            f"llmsite serving on http://{options['host']}:{options['port']} with {processes} "
            f"gateway process(es); model workers under pid {os.getpid()}",
        )
        self.stdout.flush()
        try:
            while not stop.wait(0.5):
                for i, gateway in enumerate(gateways):
                    if gateway.poll() is not None:
                        self.stderr.write(
                            f"gateway pid {gateway.pid} exited ({gateway.returncode}); restarting"
                        )
                        gateways[i] = start_gateway()
        finally:
            self._shutdown(supervisor, gateways, listener)
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                lock_path().unlink()
            lock.close()

    def _shutdown(self, supervisor: Supervisor, gateways, listener) -> None:
        supervisor.drain()
        deadline = time.monotonic() + settings.LLMSITE_DRAIN_SECONDS
        time.sleep(0.5)  # gateways see the drain; requests just admitted reach their worker
        while time.monotonic() < deadline and not supervisor.idle():
            time.sleep(0.2)
        listener.close()
        for gateway in gateways:
            with contextlib.suppress(OSError):
                gateway.send_signal(signal.SIGTERM)
        for gateway in gateways:
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        supervisor.stop()
        self.stdout.write("llmsite stopped")
