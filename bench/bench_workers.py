"""What the model worker process costs and saves: TTFT and resident memory.

One run, same machine, same model (Gemma 3 270M), the two ways llmsite can hold it:

  workers      `manage.py serve --processes 2`: two gateway processes, the model
               loaded once, in its own worker process (what `make run` does)
  in-process   two bare daphne gateway processes, each loading its own copy of
               the model (what each gateway process did before the workers)

Reported:
  TTFT at 1 client: median and p90 over --requests streamed /v1/completions, each
    one token of prompt evaluation plus the IPC hops; the ratio shows the IPC cost.
  Resident memory: the sum of RSS (from /proc, shared pages counted in each process,
    as `ps` does) of every process of each setup once the model has served.

    .venv/bin/python bench/bench_workers.py [--requests 30] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_decode import (
    BIN,
    MODELS,
    free_port,
    manage,
    prepare_model,
    server_process,
    wait_until_ready,
)

from soak.server import process_tree, rss_bytes

MIB = 1024 * 1024

MODEL = "gemma-3-270m"


def setup(workdir: Path, name: str) -> tuple[dict, str]:
    data_dir = workdir / name
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        LLMSITE_DATA_DIR=str(data_dir),
        LLMSITE_PRELOAD="1",
        DJANGO_SETTINGS_MODULE="llmsite.settings",
    )
    manage(env, "migrate", "--noinput")
    key = manage(env, "create_api_key", "--tenant", "bench", "--name", "bench").split()[-1]
    return env, key


def ttft(base: str, key: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    with httpx.Client(timeout=120) as client:
        for i in range(n + 2):
            body = {
                "model": MODEL,
                "prompt": f"Request {i}: once upon a time",
                "max_tokens": 2,
                "stream": True,
            }
            start = time.perf_counter()
            with client.stream("POST", f"{base}/v1/completions", json=body, headers=headers) as r:
                for line in r.iter_lines():
                    if line.startswith("data:") and '"text"' in line:
                        if i >= 2:  # two warm-up requests
                            out.append((time.perf_counter() - start) * 1000)
                        break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for model_id in MODELS:  # both are loaded
        prepare_model(model_id)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        # Workers: one serve, two gateway processes.
        env, key = setup(workdir, "workers")
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port), "--processes", "2"]
        with server_process(cmd, workdir / "workers.log", env) as proc:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(proc, f"{base}/ready", workdir / "workers.log")
            times = ttft(base, key, args.requests)
            results["workers"] = {
                "ttft_ms": times,
                "rss_mib": rss_bytes(proc.pid) / MIB,
                "processes": len(process_tree(proc.pid)),
            }
        # In-process: two bare daphne gateways, each with its own engine.
        env, key = setup(workdir, "inproc")
        rss = 0.0
        procs = []
        with contextlib.ExitStack() as stack:
            for n in range(2):
                port = free_port()
                cmd = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port)]
                cmd.append("llmsite.asgi:application")
                log = workdir / f"inproc{n}.log"
                proc = stack.enter_context(server_process(cmd, log, env))
                wait_until_ready(proc, f"http://127.0.0.1:{port}/ready", log)
                procs.append((proc, port))
            times = ttft(f"http://127.0.0.1:{procs[0][1]}", key, args.requests)
            ttft(f"http://127.0.0.1:{procs[1][1]}", key, 2)
            rss = sum(rss_bytes(proc.pid) for proc, _ in procs) / MIB
            results["in-process"] = {"ttft_ms": times, "rss_mib": rss, "processes": 2}
    w, i = results["workers"], results["in-process"]
    summary = {
        name: {
            "ttft_median_ms": round(statistics.median(r["ttft_ms"]), 1),
            "ttft_p90_ms": round(statistics.quantiles(r["ttft_ms"], n=10)[-1], 1),
            "rss_mib": round(r["rss_mib"], 1),
            "processes": r["processes"],
        }
        for name, r in results.items()
    }
    summary["ratios"] = {
        "ttft_median_workers_over_in_process": round(
            statistics.median(w["ttft_ms"]) / statistics.median(i["ttft_ms"]), 3
        ),
        "rss_workers_over_in_process": round(w["rss_mib"] / i["rss_mib"], 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'setup':<12} {'TTFT median':>12} {'TTFT p90':>10} {'RSS MiB':>9} {'procs':>6}")
        for name in ("workers", "in-process"):
            r = summary[name]
            print(
                f"{name:<12} {r['ttft_median_ms']:>10.1f}ms {r['ttft_p90_ms']:>8.1f}ms "
                f"{r['rss_mib']:>9.1f} {r['processes']:>6}"
            )
        print(json.dumps(summary["ratios"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
