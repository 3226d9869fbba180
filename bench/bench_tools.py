"""Tool-call latency: time to a complete `tool_calls` message, forced against free.

llmsite under daphne (a fresh data dir, SQLite, the GGUFs of ./var/models
linked in), the default chat model, one client. In rotating order, per run:

- `required`: the weather question with one tool and `tool_choice: "required"`,
  decoded under the tools' grammar, answered as `message.tool_calls`;
- `none`:     the same request with `tool_choice: "none"`: no grammar, no
  parsing (this model then writes the call as plain JSON text);
- `auto`:     the same request with `tool_choice: "auto"`: free sampling until
  the reply starts a call, then the tools' lazy grammar; parsed into `tool_calls`.

Each is a non-streamed POST /v1/chat/completions at temperature 0; the figure
is the wall time from sending it to the whole response, median over the runs
(after one uncounted warm-up of each). Completion tokens are reported too, since
the forced and the free reply do not have the same length.

    .venv/bin/python bench/bench_tools.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import (
    BIN,
    ROOT,
    free_port,
    manage,
    server_process,
    wait_until_ready,
)

MODEL = "qwen2.5-coder-0.5b-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
CHOICES = ("required", "none", "auto")


def one(client: httpx.Client, url: str, choice: str, max_tokens: int) -> tuple[float, dict]:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": choice,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    response = client.post(url, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        workdir = Path(tmp)
        models = workdir / "data" / "models"
        models.mkdir(parents=True)
        for gguf in (ROOT / "var" / "models").glob("*.gguf"):
            (models / gguf.name).symlink_to(gguf)
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(
            LLMSITE_DATA_DIR=str(workdir / "data"),
            LLMSITE_PRELOAD="1",
            LLMSITE_N_THREADS=str(args.threads),
            DJANGO_SETTINGS_MODULE="llmsite.settings",
        )
        manage(env, "migrate", "--noinput")
        key = manage(env, "create_api_key", "--tenant", "bench", "--name", "bench").split()[-1]
        port = free_port()
        log_path = workdir / "llmsite.log"
        cmd = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "llmsite.asgi:application"]
        samples: dict[str, list[tuple[float, int, str]]] = {c: [] for c in CHOICES}
        with server_process(cmd, log_path, env) as proc:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(proc, f"{base}/ready", log_path)
            url = f"{base}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(headers=headers, timeout=600) as client:
                for choice in CHOICES:  # warm-up, uncounted
                    one(client, url, choice, args.max_tokens)
                for run in range(args.runs):
                    for choice in CHOICES[run % 3 :] + CHOICES[: run % 3]:
                        elapsed, body = one(client, url, choice, args.max_tokens)
                        out = body["choices"][0]
                        tokens = body["usage"]["completion_tokens"]
                        samples[choice].append((elapsed, tokens, out["finish_reason"]))
                        print(
                            f"{choice:9} {elapsed * 1000:8.0f} ms {tokens:3} tokens",
                            file=sys.stderr,
                        )

    print(
        "| tool_choice | median ms, whole message | median completion tokens | ms/token | finish |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    summary = {}
    for choice in CHOICES:
        times = [s[0] * 1000 for s in samples[choice]]
        tokens = [s[1] for s in samples[choice]]
        reasons = sorted({s[2] for s in samples[choice]})
        ms, n = statistics.median(times), statistics.median(tokens)
        summary[choice] = {"median_ms": ms, "median_tokens": n, "samples_ms": times}
        print(f"| `{choice}` | {ms:.0f} | {n:.0f} | {ms / max(n, 1):.1f} | {', '.join(reasons)} |")
    ratio = summary["required"]["median_ms"] / summary["none"]["median_ms"]
    print(f"\n`required` / `none`: {ratio:.2f}x")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
