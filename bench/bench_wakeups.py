"""What one round trip between two processes costs, back to back and after an idle gap.

The request path crosses processes and threads several times before its first
token (gateway, ZeroMQ, the worker's event loop, the engine thread, and back).
On a VM, a thread that has slept is slow to wake, so each crossing costs more
when the machine was idle a moment before, as it is between one user's
requests. This times an echo, in one run on one machine:

  unix      a Unix socket pair between two processes (the kernel's floor)
  zmq       a ZeroMQ DEALER -> ROUTER echo over ipc://, as gateway and worker talk
  postgres  a two-row SELECT, the size of the request path's AuthGeneration
            read (from a VALUES list: it needs no migrated database), when
            DATABASE_URL names a PostgreSQL database

each --runs times back to back, then with --gap-ms of sleep before each one.

    .venv/bin/python bench/bench_wakeups.py [--runs 100] [--gap-ms 40]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from bench_overhead import percentile


def echo_unix() -> tuple[Callable[[], None], Callable[[], None]]:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        while (data := theirs.recv(16)) and data != b"q":
            theirs.send(data)
        os._exit(0)
    theirs.close()

    def once() -> None:
        ours.send(b"x")
        ours.recv(16)

    def stop() -> None:
        ours.send(b"q")
        os.waitpid(pid, 0)

    return once, stop


def echo_zmq(address: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pid = os.fork()
    if pid == 0:
        router = zmq.Context().socket(zmq.ROUTER)
        router.bind(address)
        while True:
            ident, data = router.recv_multipart()
            if data == b"q":
                os._exit(0)
            router.send_multipart([ident, data])
    dealer = zmq.Context().socket(zmq.DEALER)
    dealer.connect(address)
    dealer.send(b"x")  # the first exchange waits for the child to bind
    dealer.recv()

    def once() -> None:
        dealer.send(b"x")
        dealer.recv()

    def stop() -> None:
        dealer.send(b"q")
        os.waitpid(pid, 0)

    return once, stop


def read_postgres(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    sql = (
        "SELECT scope, value FROM (VALUES (1, 1), (0, 2)) AS g (scope, value)"
        " WHERE scope IN (%s, %s)"
    )

    def once() -> None:
        conn.execute(sql, (1, 0)).fetchall()

    return once, conn.close


def timed(once: Callable[[], None], runs: int, gap_s: float) -> list[float]:
    samples = []
    for _ in range(runs):
        if gap_s:
            time.sleep(gap_s)
        start = time.perf_counter()
        once()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=40.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        echoes = {"unix": echo_unix, "zmq": lambda: echo_zmq(f"ipc://{Path(tmp) / 'echo'}")}
        url = os.environ.get("DATABASE_URL", "")
        if url.startswith(("postgres://", "postgresql://")):
            echoes["postgres"] = lambda: read_postgres(url)
        print(f"round trip, median / p90 ms of {args.runs}")
        print(f"{'':10s}{'back to back':>18s}{f'after {args.gap_ms:g} ms idle':>24s}")
        for name, start in echoes.items():
            once, stop = start()
            try:
                timed(once, 10, 0)  # warm-up
                row = []
                for gap in (0.0, args.gap_ms / 1000):
                    xs = timed(once, args.runs, gap)
                    row.append(f"{statistics.median(xs):.3f} / {percentile(xs, 0.9):.3f}")
            finally:
                stop()
            print(f"{name:10s}{row[0]:>18s}{row[1]:>24s}")


if __name__ == "__main__":
    main()
