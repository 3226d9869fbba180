"""Schema fuzzing: schemathesis against a live llmsite's /api/schema/, every operation.

Runs twice, once with an API key and once with an owner's JWT, with the checks
`not_a_server_error` and `response_schema_conformance` and a bounded number of
examples per operation. Exit status 0 when both runs found nothing.

    .venv/bin/python soak/fuzz.py --max-examples 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak.server import live_server

CHECKS = "not_a_server_error,response_schema_conformance"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=25, help="per operation and run")
    parser.add_argument("--max-time", type=int, default=600, help="seconds per run")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--report-dir", default="var/soak/fuzz")
    parser.add_argument(
        "--include-path-regex", default="", help="only these operations (e.g. '^/v1/models')"
    )
    args = parser.parse_args()
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    schemathesis = str(Path(sys.executable).with_name("schemathesis"))
    # Long generations are not what this looks for: keep the model's work small.
    failed = []
    # An access token outlives both runs; sign-ins are not what is measured here.
    env = {"LLMSITE_LOGIN_RATE": "10000/m", "LLMSITE_JWT_ACCESS_MINUTES": "120"}
    with live_server(env) as (server, jwt):
        for name, token in (("api-key", server.api_key), ("jwt", jwt)):
            started = time.monotonic()
            cmd = [
                schemathesis,
                "--config-file",
                str(Path(__file__).with_name("schemathesis.toml")),
                "run",
                f"{server.base_url}/api/schema/",
                "--checks",
                CHECKS,
                "--max-examples",
                str(args.max_examples),
                "--max-time",
                str(args.max_time),
                "--seed",
                str(args.seed),
                "--workers",
                "1",
                "--request-timeout",
                "120",
                "--suppress-health-check",
                "all",
                "--header",
                f"Authorization: Bearer {token}",
                "--report",
                "junit",
                "--report-junit-path",
                str(report_dir / f"{name}.xml"),
            ]
            if args.include_path_regex:
                cmd += ["--include-path-regex", args.include_path_regex]
            print(f"== schemathesis with {name} ==", flush=True)
            rc = subprocess.run(cmd, check=False).returncode
            print(f"== {name}: exit {rc} in {time.monotonic() - started:.0f}s ==", flush=True)
            if rc != 0:
                failed.append(name)
        if failed:
            print(f"server log: {server.log_path}", flush=True)
            log = Path(server.log_path).read_text(errors="replace")
            (report_dir / "daphne.log").write_text(log)
    print("fuzz:", "FAILED " + ", ".join(failed) if failed else "ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
