"""Aggregate throughput under concurrent streaming clients: llmsite against its peers.

One run, one model, one thread count; every system's server is started first
and they take turns, one round at a time, so that a machine whose speed drifts
during the run tilts no ratio:

  llmsite           daphne + Django with API-key auth, quotas, prices and usage records on
  llama-server      llama.cpp's C++ server from the xllamacpp wheel, same slot count
  llama_cpp.server  llama-cpp-python's own server (one request at a time)

For each client count (1, 4, 8, 16 by default) every system gets one uncounted
warm-up round, then --rounds rounds (the systems in turn, the first one
rotating) in which that many clients each stream one /v1/completions request at
once: a distinct prompt per client, temperature 0, --max-tokens tokens with the
end-of-turn tokens banned through logit_bias, so every request runs to
max_tokens. A token is one streamed SSE event with text. Only the system whose
turn it is has work; the others sit idle.

  aggregate tok/s = tokens of all clients / (last client done - first client start)
  TTFT            = first token - that client's request start (median and p99 over
                    every request of the measured rounds)

llmsite's TTFT is also split by its Server-Timing header: its own time (gateway:
parsing, authentication, routing, prompt building), quota, the backend (engine
and worker hops, to the first token), and what lies outside the server's span
(HTTP, daphne, this client): medians over the same requests.

Client i sends the same prompt in every round, as a user repeating a request
would, so every server's prompt cache can answer it. With --fresh-prompts each
round numbers its prompts ("..., part 7."): no request repeats an earlier one,
and only the shared beginning can come from a cache.

Each client opens a new connection for its request by default. With
--keep-alive it opens it first with a GET /v1/models, before the clients
start together, and streams on that warm connection, as an SDK that keeps its
connections alive does for every request after its first: TTFT then leaves
out the TCP handshake and the server's accepting of a connection.

The median aggregate over rounds is reported, with llmsite's ratio to each peer.

    .venv/bin/python bench/bench_concurrency.py [--clients 1,4,8,16] [--rounds 2]
        [--fresh-prompts] [--keep-alive] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_decode import (
    LLMSITE_MODEL,
    MODELS,
    N_CTX,
    BenchError,
    CpuWatch,
    _exit_on_signal,
    first_model_id,
    free_port,
    http_client,
    log,
    manage,
    prepare_model,
    server_process,
    wait_until_ready,
)
from bench_overhead import fresh_database

LLMSITE = "llmsite"
LLAMA_SERVER = "llama-server"
LLAMA_CPP_SERVER = "llama_cpp.server"
SUBJECTS = [
    "a lighthouse keeper", "a clockmaker", "a dragon", "a sailor", "a baker",
    "a violinist", "a fox", "a mountain village", "a robot", "a gardener",
    "a detective", "an astronaut", "a painter", "a river", "a librarian", "a wolf",
]  # fmt: skip


@dataclass(frozen=True)
class Config:
    model_path: Path
    clients: list[int]
    rounds: int
    max_tokens: int
    threads: int
    slots: int
    ban: dict[str, float]  # logit_bias that keeps every request going to max_tokens
    fresh: bool = False  # a new prompt per client in every round
    web_processes: int = 1  # llmsite's gateway processes (manage.py serve --processes)
    model_id: str = LLMSITE_MODEL  # what llmsite serves from model_path
    stores: str = "sqlite"  # llmsite's database and quota store: sqlite, postgres-redis
    keep_alive: bool = False  # each client's connection opened before the round starts


@dataclass
class Level:
    clients: int
    aggregate: list[float] = field(default_factory=list)  # tok/s, one per round
    ttft: list[float] = field(default_factory=list)  # seconds, every request
    tokens: list[int] = field(default_factory=list)  # per request
    # llmsite: each request's TTFT split by its Server-Timing header (ms; split_of).
    splits: list[dict[str, float]] = field(default_factory=list)

    def split_median_ms(self, stage: str) -> float:
        values = [s[stage] for s in self.splits]
        return statistics.median(values) if values else math.nan

    @property
    def tps(self) -> float:
        return statistics.median(self.aggregate) if self.aggregate else math.nan

    @property
    def ttft_median_ms(self) -> float:
        return statistics.median(self.ttft) * 1000 if self.ttft else math.nan

    @property
    def ttft_p99_ms(self) -> float:
        if not self.ttft:
            return math.nan
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000


@dataclass
class SystemResult:
    name: str
    levels: dict[int, Level] = field(default_factory=dict)
    error: str | None = None
    other_cpu: float = math.nan


def prompt_for(i: int, part: int | None = None) -> str:
    subject = SUBJECTS[i % len(SUBJECTS)]
    if part is None:
        return f"Write a long story about {subject}."
    return f"Write a long story about {subject}, part {part}."


SPLIT_STAGES = ("gateway", "quota", "backend", "outside")


def server_timing(value: str | None) -> dict[str, float]:
    """A Server-Timing header's metrics: name -> dur (ms)."""
    metrics = {}
    for metric in (value or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            if param.startswith("dur="):
                metrics[name] = float(param[4:])
    return metrics


def split_of(timing: dict[str, float], ttft_s: float) -> dict[str, float] | None:
    """One request's TTFT in stages (ms), when its server named them (llmsite does)."""
    if not {"quota", "backend", "total"} <= timing.keys() or math.isnan(ttft_s):
        return None
    gateway = timing["total"] - timing["quota"] - timing["backend"]
    outside = ttft_s * 1000 - timing["total"]
    return {"gateway": gateway, "quota": timing["quota"], "backend": timing["backend"],
            "outside": outside}  # fmt: skip


def stream_one(
    client: httpx.Client, url: str, payload: dict, headers: dict
) -> tuple[float, float, int, dict[str, float]]:
    """(start, first token, tokens, Server-Timing metrics) of one streamed completion."""
    start = time.perf_counter()
    first = math.nan
    tokens = 0
    with client.stream("POST", url, json=payload, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise BenchError(f"POST {url} answered {response.status_code}: {response.text[:300]}")
        timing = server_timing(response.headers.get("server-timing"))
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"POST {url} streamed an error: {event['error']}")
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                tokens += 1
                if tokens == 1:
                    first = time.perf_counter()
    return start, first, tokens, timing


def warm_connection(client: httpx.Client, url: str, headers: dict) -> None:
    """Open the client's connection with a request that generates nothing."""
    models = url.rsplit("/v1/", 1)[0] + "/v1/models"
    response = client.get(models, headers=headers)
    if response.status_code != 200:
        raise BenchError(f"GET {models} answered {response.status_code}: {response.text[:300]}")


def run_round(
    n: int,
    url: str,
    make_payload: Callable[[int, int | None], dict],
    headers: dict,
    part: int | None = None,
    keep_alive: bool = False,
) -> tuple[float, list[float], list[int], list[dict[str, float]]]:
    results: list[tuple[float, float, int, dict] | BaseException] = [None] * n  # type: ignore[list-item]
    barrier = threading.Barrier(n)

    def client_thread(i: int) -> None:
        with http_client() as client:
            try:
                if keep_alive:
                    warm_connection(client, url, headers)
                barrier.wait()
                results[i] = stream_one(client, url, make_payload(i, part), headers)
            except BaseException as exc:  # reported below, in the main thread
                results[i] = exc

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise BenchError(f"a client failed: {failed}")
    done = time.perf_counter()
    starts = [r[0] for r in results]
    tokens = [r[2] for r in results]
    ttfts = [r[1] - r[0] for r in results]
    splits = [s for r, t in zip(results, ttfts) if (s := split_of(r[3], t)) is not None]
    return sum(tokens) / (done - min(starts)), ttfts, tokens, splits


@dataclass
class Target:
    """A started server, ready for rounds."""

    name: str
    url: str
    make_payload: Callable[[int, int | None], dict]
    pid: int
    headers: dict = field(default_factory=dict)


def one_round(
    n: int,
    target: Target,
    result: SystemResult,
    part: int | None = None,
    keep_alive: bool = False,
) -> tuple[float, list[float], list[int], list[dict[str, float]]] | None:
    """One round against `target`; a failure drops the system from the rest of the run."""
    try:
        return run_round(n, target.url, target.make_payload, target.headers, part, keep_alive)
    except (BenchError, httpx.HTTPError, OSError) as exc:
        log(f"  {target.name}: dropped: {exc}")
        result.error = f"{type(exc).__name__}: {exc}"
        return None


def measure(targets: list[Target], cfg: Config) -> dict[str, SystemResult]:
    """Every client count, each system in turn round by round (who goes first rotates)."""
    results = {t.name: SystemResult(t.name) for t in targets}
    watch = CpuWatch([os.getpid(), *(t.pid for t in targets)])
    for n in cfg.clients:
        live = [t for t in targets if not results[t.name].error]
        levels = {t.name: Level(n) for t in live}
        # Every system gets the same prompts in a round; with --fresh-prompts
        # no round's prompts were seen before (the warm-up's included).
        parts = [n * 1000 + r if cfg.fresh else None for r in range(cfg.rounds + 1)]
        for target in live:
            one_round(n, target, results[target.name], parts[0], cfg.keep_alive)  # warm-up
        for r in range(cfg.rounds):
            turn = r % len(live) if live else 0
            for target in live[turn:] + live[:turn]:
                result = results[target.name]
                if result.error:
                    continue
                done = one_round(n, target, result, parts[r + 1], cfg.keep_alive)
                if done is None:
                    continue
                tps, ttfts, tokens, splits = done
                level = levels[target.name]
                level.aggregate.append(tps)
                level.ttft += ttfts
                level.tokens += tokens
                level.splits += splits
                log(
                    f"  {target.name}: {n} clients, round {r + 1}/{cfg.rounds}: {tps:.1f} tok/s, "
                    f"TTFT median {statistics.median(ttfts) * 1000:.0f} ms, "
                    f"tokens {min(tokens)}-{max(tokens)}"
                )
        for target in live:
            if not results[target.name].error:
                results[target.name].levels[n] = levels[target.name]
    other = watch.other_cores()
    for result in results.values():
        result.other_cpu = other
    return results


def payload_maker(
    model: str, cfg: Config, extra: dict | None = None
) -> Callable[[int, int | None], dict]:
    def make(i: int, part: int | None = None) -> dict:
        return {
            "model": model,
            "prompt": prompt_for(i, part),
            "max_tokens": cfg.max_tokens,
            "temperature": 0,
            "stream": True,
            "logit_bias": cfg.ban,
            **(extra or {}),
        }

    return make


# -- the systems ---------------------------------------------------------------------------
def start_llmsite(cfg: Config, workdir: Path, stack: contextlib.ExitStack) -> Target:
    data_dir = workdir / "llmsite-data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    if cfg.stores == "postgres-redis":
        # A production's stores: a fresh database on DATABASE_URL's server (dropped
        # at the end), quota counters on REDIS_URL under a prefix of this run's own.
        database_url, drop = fresh_database()
        stack.callback(drop)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=os.environ["REDIS_URL"],
            LLMSITE_QUOTA_PREFIX=f"llmsite:bench:{uuid.uuid4().hex}",
        )
    env.update(
        LLMSITE_DATA_DIR=str(data_dir),
        LLMSITE_PRELOAD="1",
        LLMSITE_DEFAULT_MODEL=cfg.model_id,
        LLMSITE_N_THREADS=str(cfg.threads),
        DJANGO_SETTINGS_MODULE="llmsite.settings",
    )
    manage(env, "migrate", "--noinput")
    key = manage(env, "create_api_key", "--tenant", "bench", "--name", "bench").split()[-1]
    # Quotas and prices on, so that every request reserves, settles and records usage.
    manage(env, "set_quota", "--tenant", "bench", "--rpm", "100000", "--tpm", "100000000",
           "--tokens-per-day", "1000000000", "--concurrent", "256")  # fmt: skip
    manage(env, "set_price", cfg.model_id, "--prompt", "0.10", "--completion", "0.40")
    manage(env, "shell", "-c",
           "from inference.models import LLMModel; "
           f"LLMModel.objects.filter(model_id='{cfg.model_id}')"
           f".update(n_parallel={cfg.slots}, n_ctx={N_CTX})")  # fmt: skip
    port = free_port()
    log_path = workdir / "llmsite.log"
    # As `make run` serves: gateway processes, the model in its own worker process.
    cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
    cmd += ["--processes", str(cfg.web_processes)]
    proc = stack.enter_context(server_process(cmd, log_path, env))
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, f"{base}/ready", log_path)
    headers = {"Authorization": f"Bearer {key}"}
    make = payload_maker(cfg.model_id, cfg)
    return Target(LLMSITE, f"{base}/v1/completions", make, proc.pid, headers)


def start_llama_server(cfg: Config, workdir: Path, stack: contextlib.ExitStack) -> Target:
    port = free_port()
    log_path = workdir / "llama_server.log"
    cmd = [
        sys.executable, str(Path(__file__).parent / "xllamacpp_server.py"),
        "--model", str(cfg.model_path),
        "--n-ctx", str(N_CTX * cfg.slots),  # N_CTX per slot, like llmsite's n_ctx per sequence
        "--threads", str(cfg.threads),
        "--parallel", str(cfg.slots),
        "--port", str(port),
    ]  # fmt: skip
    proc = stack.enter_context(server_process(cmd, log_path))
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, f"{base}/health", log_path)
    make = payload_maker(first_model_id(base), cfg)
    return Target(LLAMA_SERVER, f"{base}/v1/completions", make, proc.pid)


def start_llama_cpp_server(cfg: Config, workdir: Path, stack: contextlib.ExitStack) -> Target:
    port = free_port()
    log_path = workdir / "llama_cpp_server.log"
    threads = str(cfg.threads)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(cfg.model_path),
        "--n_ctx", str(N_CTX),
        "--n_threads", threads,
        "--n_threads_batch", threads,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--verbose", "False",
    ]  # fmt: skip
    proc = stack.enter_context(server_process(cmd, log_path))
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(proc, f"{base}/v1/models", log_path)
    make = payload_maker(first_model_id(base), cfg, {"repeat_penalty": 1.0})
    return Target(LLAMA_CPP_SERVER, f"{base}/v1/completions", make, proc.pid)


def guarded(name: str, start: Callable[[], Target]) -> tuple[Target | None, SystemResult | None]:
    log(f"starting {name} ...")
    try:
        return start(), None
    except (BenchError, httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        log(f"  {name}: skipped: {exc}")
        return None, SystemResult(name, error=f"{type(exc).__name__}: {exc}")


# -- reporting -----------------------------------------------------------------------------
def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def table(cfg: Config, results: list[SystemResult]) -> str:
    site = next((r for r in results if r.name == LLMSITE and not r.error), None)
    peers = [r for r in results if r.name != LLMSITE and not r.error]
    header = ["system", *(f"{n} cl tok/s" for n in cfg.clients)]
    header += [f"TTFT med/p99 ms @{n}" for n in cfg.clients]
    rows = []
    for r in results:
        if r.error:
            continue
        cells = [r.name]
        cells += [fmt(r.levels[n].tps, ".1f") for n in cfg.clients]
        cells += [
            f"{fmt(r.levels[n].ttft_median_ms, '.0f')}/{fmt(r.levels[n].ttft_p99_ms, '.0f')}"
            for n in cfg.clients
        ]
        rows.append(cells)
    if site:
        for peer in peers:
            cells = [f"llmsite / {peer.name}"]
            cells += [
                fmt(site.levels[n].tps / peer.levels[n].tps, ".2f") + "x" for n in cfg.clients
            ]
            cells += ["" for _ in cfg.clients]
            rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [header, ["-" * w for w in widths], *rows]
    ]
    if site and any(site.levels[n].splits for n in cfg.clients):
        lines.append("llmsite TTFT by Server-Timing, medians in ms:")
        for n in cfg.clients:
            level = site.levels[n]
            if level.splits:
                stages = ", ".join(
                    f"{stage} {level.split_median_ms(stage):.1f}" for stage in SPLIT_STAGES
                )
                lines.append(f"  @{n}: {stages}")
    lines += [f"{r.name}: skipped: {r.error.splitlines()[0]}" for r in results if r.error]
    lines += [
        f"{r.name}: other processes kept {r.other_cpu:.2f} cores busy"
        for r in results
        if not r.error and r.other_cpu > 0.1
    ]
    return "\n".join(lines)


def summary(cfg: Config, results: list[SystemResult]) -> dict[str, Any]:
    def num(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)

    return {
        "config": {
            "model_path": str(cfg.model_path),
            "clients": cfg.clients,
            "rounds": cfg.rounds,
            "max_tokens": cfg.max_tokens,
            "threads": cfg.threads,
            "slots": cfg.slots,
            "fresh_prompts": cfg.fresh,
            "keep_alive": cfg.keep_alive,
            "cpu_count": os.cpu_count(),
        },
        "systems": [
            {
                "name": r.name,
                "error": r.error,
                "other_cpu_cores": num(r.other_cpu),
                "levels": {
                    n: {
                        "aggregate_tps": [num(x) for x in level.aggregate],
                        "median_tps": num(level.tps),
                        "ttft_median_ms": num(level.ttft_median_ms),
                        "ttft_p99_ms": num(level.ttft_p99_ms),
                        "tokens": level.tokens,
                        "ttft_split_median_ms": {
                            stage: num(level.split_median_ms(stage)) for stage in SPLIT_STAGES
                        }
                        if level.splits
                        else None,
                    }
                    for n, level in r.levels.items()
                },
            }
            for r in results
        ],
    }


def eog_bias(model_path: Path) -> dict[str, float]:
    from llama_cpp import Llama, llama_cpp

    vocab_only = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    try:
        vocab = vocab_only._model.vocab
        return {
            str(t): -100.0
            for t in range(vocab_only.n_vocab())
            if llama_cpp.llama_vocab_is_eog(vocab, t)
        }
    finally:
        vocab_only.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--slots", type=int, default=8, help="n_parallel = llama-server -np")
    parser.add_argument("--systems", default=f"{LLMSITE},{LLAMA_SERVER},{LLAMA_CPP_SERVER}")
    parser.add_argument(
        "--fresh-prompts", action="store_true", help="a new prompt per client every round"
    )
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="each client's connection opened (GET /v1/models) before its round starts",
    )
    parser.add_argument(
        "--web-processes", type=int, default=1, help="llmsite gateway processes (serve)"
    )
    parser.add_argument("--model", choices=MODELS, default=LLMSITE_MODEL)
    parser.add_argument(
        "--stores",
        choices=("sqlite", "postgres-redis"),
        default="sqlite",
        help="llmsite's stores: the embedded default, or DATABASE_URL + REDIS_URL",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)

    model_path = prepare_model(args.model)
    cfg = Config(
        model_path=model_path,
        clients=[int(x) for x in args.clients.split(",")],
        rounds=args.rounds,
        max_tokens=args.max_tokens,
        threads=args.threads,
        slots=args.slots,
        ban=eog_bias(model_path),
        fresh=args.fresh_prompts,
        web_processes=args.web_processes,
        model_id=args.model,
        stores=args.stores,
        keep_alive=args.keep_alive,
    )
    if cfg.stores == "postgres-redis" and not (
        os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")
    ):
        parser.error("--stores postgres-redis needs DATABASE_URL and REDIS_URL")
    systems = {
        LLMSITE: start_llmsite,
        LLAMA_SERVER: start_llama_server,
        LLAMA_CPP_SERVER: start_llama_cpp_server,
    }
    names = args.systems.split(",")
    with (
        tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        started = {
            name: guarded(name, lambda name=name: systems[name](cfg, Path(tmp), stack))
            for name in names
        }
        measured = measure([t for t, _ in started.values() if t is not None], cfg)
        results = [failed or measured[name] for name, (_, failed) in started.items()]
    print(
        f"{cfg.model_id} ({cfg.model_path.name}) on every system, llmsite on {cfg.stores}, "
        f"{cfg.max_tokens} tokens per client, EOS banned, {cfg.threads} threads, "
        f"{cfg.slots} slots, median of {cfg.rounds} rounds, "
        + ("a new prompt every round" if cfg.fresh else "the same prompts every round")
        + (", connections opened before each round" if cfg.keep_alive else "")
    )
    print(table(cfg, results))
    if args.json:
        print(json.dumps(summary(cfg, results), indent=2))
    return 1 if any(r.error for r in results if r.name == LLMSITE) else 0


if __name__ == "__main__":
    raise SystemExit(main())
