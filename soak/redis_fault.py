"""Redis stops and starts under a live llmsite: what clients get, and that it recovers.

A private redis-server on a free port (never the shared one), a daphne on it and
PostgreSQL; chat requests before, during (one at a time, then --concurrency at
once) and after the outage. Prints what each phase answered; exit status 0 when
requests during the outage failed closed (a clean 503 or 429 in the error shape,
never a 200 -- no admission without Redis's counters, however many clients at
once -- never another 5xx) and the server answered 200 again on its own within
--recover seconds of Redis's return.

    .venv/bin/python soak/redis_fault.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak.server import live_server


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(50):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout:
            return proc
        time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="per phase")
    parser.add_argument("--recover", type=int, default=60, help="seconds allowed to recover")
    parser.add_argument(
        "--concurrency", type=int, default=3, help="clients at once while Redis is down"
    )
    args = parser.parse_args()
    import httpx

    from tests.live import free_port

    port = free_port()
    redis = start_redis(port)
    problems = []
    try:
        env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        with live_server(env) as (server, _jwt):
            server.manage("set_quota", "--tenant", "live", "--concurrent", "4", "--rpm", "1000")
            headers = {"Authorization": f"Bearer {server.api_key}"}
            body = {
                "model": "qwen2.5-coder-0.5b-instruct",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            }

            def call() -> tuple[int, str]:
                try:
                    r = httpx.post(
                        f"{server.base_url}/v1/chat/completions",
                        json=body,
                        headers=headers,
                        timeout=60,
                    )
                except httpx.HTTPError as exc:
                    return -1, repr(exc)
                code = (r.json().get("error") or {}).get("code") if r.status_code != 200 else ""
                return r.status_code, code or ""

            before = Counter(call() for _ in range(args.requests))
            redis.terminate()
            redis.wait(10)
            during = Counter(call() for _ in range(args.requests))
            # Then several clients at once: none may be admitted (a 200) without Redis.
            with ThreadPoolExecutor(args.concurrency) as pool:
                during_concurrent = Counter(
                    pool.map(lambda _: call(), range(args.requests * args.concurrency))
                )
            redis = start_redis(port)
            started = time.monotonic()
            after: Counter = Counter()
            recovered = None
            while time.monotonic() - started < args.recover:
                result = call()
                after[result] += 1
                if result[0] == 200:
                    recovered = time.monotonic() - started
                    break
                time.sleep(1)
            print(f"before: {dict(before)}")
            print(f"Redis down: {dict(during)}")
            print(f"Redis down, {args.concurrency} at once: {dict(during_concurrent)}")
            print(f"Redis back: {dict(after)}; recovered in {recovered}s")
            if set(s for s, _ in before) != {200}:
                problems.append(f"before the outage: {dict(before)}")
            if any(s not in (429, 503) for s, _ in during):
                problems.append(f"during the outage, not a clean 503/429: {dict(during)}")
            if any(s not in (429, 503) for s, _ in during_concurrent):
                problems.append(
                    f"during the outage, concurrent, not a clean 503/429: {dict(during_concurrent)}"
                )
            if recovered is None:
                problems.append(f"no 200 within {args.recover}s of Redis's return")
    finally:
        redis.terminate()
        redis.wait(10)
    for problem in problems:
        print("FAIL:", problem)
    print("redis fault:", "FAILED" if problems else "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
