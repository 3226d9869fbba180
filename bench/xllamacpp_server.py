"""Run xllamacpp's built-in llama-server (llama.cpp's own HTTP server) until SIGTERM.

bench_decode.py starts this as a subprocess, so that the llama.cpp build inside
xllamacpp never shares a process with the one inside llama-cpp-python.

    python bench/xllamacpp_server.py --model PATH --port 8080 --n-ctx 4096 --threads 2
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", type=int, default=1, help="slots (requests decoded together)")
    args = parser.parse_args(argv)

    # Block the signals before the server starts its threads, so that they all
    # inherit the mask and sigwait() below is the only place they land.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.n_ctx = args.n_ctx
    params.n_batch = args.n_batch
    params.n_parallel = args.parallel  # bench_decode: one slot, single-stream decode
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = [args.host]
    params.port = args.port

    server = xllamacpp.Server(params)  # loads the model and serves from background threads
    print(f"xllamacpp {xllamacpp.__version__} listening on {server.listening_address}", flush=True)
    signal.sigwait(stop)
    sys.stdout.flush()
    # Skip interpreter teardown: the server's threads are still running, and
    # destroying it from here can block; the OS reclaims everything.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
