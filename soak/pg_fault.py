"""PostgreSQL restarts under a live llmsite with concurrent traffic: what clients get,
that every 200 left exactly one usage record, and that the server recovers.

A private PostgreSQL cluster (initdb in a temp dir, trust auth, a free port; never
the shared one), a private redis-server, a daphne on both; a few threads send chat
requests (each with its own `x-request-id`) before, during and after
`pg_ctl restart -m fast` (or a stop of --down seconds, then a start). Exit status 0
when: every request answered 200 has exactly one usage record afterwards; every
other answer is a clean 503/429 in the error shape (no other 5xx, no connection
error, no hang past the client timeout); and the server answers 200 again on its
own within --recover seconds of PostgreSQL's return.

    .venv/bin/python soak/pg_fault.py --threads 3 --down 5
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak.redis_fault import start_redis
from soak.server import live_server


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name) or name


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Cluster:
    def __init__(self, root: Path, port: int) -> None:
        self.data = root / "data"
        self.port = port
        self.log = root / "pg.log"
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        subprocess.run(
            _as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust"]),
            check=True,
            capture_output=True,
        )

    def ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        cmd = [_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w"]
        subprocess.run(
            _as_postgres([*cmd, *args]),
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=3, help="concurrent clients")
    parser.add_argument("--phase", type=float, default=6, help="seconds of traffic before/after")
    parser.add_argument("--down", type=float, default=5, help="seconds PostgreSQL stays down")
    parser.add_argument("--recover", type=int, default=60, help="seconds allowed to recover")
    args = parser.parse_args()
    import logging

    import httpx

    from tests.live import free_port

    logging.getLogger("httpx").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="llmsite-pgfault-"))
    tmp.chmod(0o755)  # the cluster's owner walks into it
    cluster = Cluster(tmp / "pg", free_port())
    cluster.ctl("start")
    redis_port = free_port()
    redis = start_redis(redis_port)
    problems: list[str] = []
    results: list[dict] = []
    phase = ["before"]
    try:
        os.environ["DATABASE_URL"] = cluster.url
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        with live_server({"REDIS_URL": os.environ["REDIS_URL"]}) as (server, _jwt):
            server.manage("set_quota", "--tenant", "live", "--concurrent", "8", "--rpm", "10000")
            body = {
                "model": "qwen2.5-coder-0.5b-instruct",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            }
            stop = threading.Event()

            def client() -> None:
                with httpx.Client(timeout=60) as http:
                    while not stop.is_set():
                        rid = f"pgfault-{uuid.uuid4().hex[:12]}"
                        entry = {"id": rid, "phase": phase[0]}
                        started = time.monotonic()
                        try:
                            r = http.post(
                                f"{server.base_url}/v1/chat/completions",
                                json=body,
                                headers={
                                    "Authorization": f"Bearer {server.api_key}",
                                    "x-request-id": rid,
                                },
                            )
                            entry["status"] = r.status_code
                            entry["rid"] = r.headers.get("x-request-id", "")
                            if r.status_code != 200:
                                error = r.json().get("error") or {}
                                entry["code"] = error.get("code") or ""
                                entry["shaped"] = {"message", "type", "param", "code"} <= set(error)
                        except (httpx.HTTPError, ValueError) as exc:
                            entry["status"] = -1
                            entry["code"] = repr(exc)[:120]
                        entry["phase_end"] = phase[0]
                        entry["s"] = time.monotonic() - started
                        results.append(entry)
                        if entry["status"] != 200:
                            time.sleep(0.3)

            threads = [threading.Thread(target=client) for _ in range(args.threads)]
            for t in threads:
                t.start()
            time.sleep(args.phase)
            phase[0] = "down"
            cluster.ctl("stop", "-m", "fast")
            time.sleep(args.down)
            cluster.ctl("start")
            phase[0] = "back"
            back_at = time.monotonic()
            recovered = None
            while time.monotonic() - back_at < args.recover:
                late = [e for e in results if e["phase"] == "back" and e["status"] == 200]
                if late:
                    recovered = time.monotonic() - back_at
                    break
                time.sleep(0.2)
            time.sleep(args.phase)
            stop.set()
            for t in threads:
                t.join(90)

            ok = [e for e in results if e["status"] == 200]
            time.sleep(1)  # records are written in the service's `finally`
            rows = server.query(
                "SELECT request_id FROM billing_usagerecord WHERE request_id LIKE ?",
                ("pgfault-%",),
            )
            got = Counter(r[0] for r in rows)
            # A request that spans two phases counts in both.
            for name in ("before", "down", "back"):
                spans = [e for e in results if name in (e["phase"], e["phase_end"])]
                seen = Counter((e["status"], e.get("code", "")) for e in spans)
                slowest = max((e["s"] for e in spans), default=0)
                print(f"{name}: {dict(seen)}; slowest {slowest:.1f}s")
                # How long a client waited for its 503: the figure that fail-fast moves.
                waits = sorted(e["s"] for e in spans if e["status"] == 503)
                if waits:
                    print(
                        f"  {len(waits)} 503s: median {waits[len(waits) // 2]:.2f}s,"
                        f" max {waits[-1]:.2f}s"
                    )
            took = None if recovered is None else round(recovered, 1)
            print(
                f"PostgreSQL back: recovered in {took}s;"
                f" {len(results)} requests, {len(ok)} answered 200, {len(rows)} usage records"
            )
            missing = [e["id"] for e in ok if got[e["id"]] == 0]
            doubled = [rid for rid, n in got.items() if n > 1]
            mislabelled = [e["id"] for e in ok if e["rid"] != e["id"]]
            bad = [
                e
                for e in results
                if e["status"] != 200 and (e["status"] not in (429, 503) or not e.get("shaped"))
            ]
            if missing:
                problems.append(f"{len(missing)} 200s without a usage record, e.g. {missing[:5]}")
            if doubled:
                problems.append(f"{len(doubled)} requests with several records, e.g. {doubled[:5]}")
            if mislabelled:
                problems.append(f"{len(mislabelled)} 200s without their x-request-id back")
            if bad:
                problems.append(f"{len(bad)} answers not a clean 503/429, e.g. {bad[:3]}")
            if not any(e["status"] == 200 and e["phase"] == "before" for e in results):
                problems.append("no 200 before the outage")
            if recovered is None:
                problems.append(f"no 200 within {args.recover}s of PostgreSQL's return")
            log = server.log_path.read_text(errors="replace")
            print(f"server log: {log.count('Traceback')} tracebacks")
            if problems and "Traceback" in log:
                print(log[log.rindex("Traceback") :][-3000:])
    finally:
        redis.terminate()
        redis.wait(10)
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.ctl("stop", "-m", "immediate")
        shutil.rmtree(tmp, ignore_errors=True)
    for problem in problems:
        print("FAIL:", problem)
    print("postgres fault:", "FAILED" if problems else "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
