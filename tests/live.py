"""A real llmsite under daphne on a free loopback port, with its own database.

SQLite: a fresh data dir. PostgreSQL (DATABASE_URL set): a fresh database
created beside the configured one and dropped afterwards. REDIS_URL, when set,
is passed through.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    api_key: str
    env: dict
    process: subprocess.Popen
    _pg_url: str | None = None
    _sqlite_path: Path | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the server's own database (usage records, keys)."""
        if self._pg_url:
            import psycopg

            with psycopg.connect(self._pg_url, autocommit=True) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        with sqlite3.connect(self._sqlite_path, timeout=20) as conn:
            return conn.execute(sql, params).fetchall()

    def manage(self, *args: str, stdin: str = "") -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return result.stdout


def _pg_create(url: str) -> tuple[str, str]:
    import psycopg

    parts = urlsplit(url)
    name = f"llmsite_live_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}")), name


def _pg_drop(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start(
    tmp_dir: Path, *, extra_env: dict | None = None, processes: int = 1
) -> tuple[LiveServer, callable]:
    """`manage.py serve` as `make run` starts it: `processes` gateway processes,
    one model worker process per model under the supervisor."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        {
            "LLMSITE_DATA_DIR": str(tmp_dir),
            "LLMSITE_PRELOAD": "1",
            "DJANGO_SETTINGS_MODULE": "llmsite.settings",
            "PYTHONUNBUFFERED": "1",
            "LLMSITE_DRAIN_SECONDS": "3",
        }
    )
    env.update(extra_env or {})
    # The bundled GGUF is assembled once into the main data dir; reuse it.
    models_dir = tmp_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    for gguf in Path(settings.MODELS_DIR).glob("*.gguf"):
        (models_dir / gguf.name).symlink_to(gguf)

    admin_pg = env.get("DATABASE_URL") or None
    pg_url = pg_name = None
    if admin_pg:
        pg_url, pg_name = _pg_create(admin_pg)
        env["DATABASE_URL"] = pg_url

    def run(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout

    run("migrate", "--noinput")
    key = run("create_api_key", "--tenant", "live", "--name", "live").strip().splitlines()[-1]
    port = free_port()
    log_path = tmp_dir / "daphne.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--processes",
            str(processes),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(
        base_url=f"http://127.0.0.1:{port}",
        api_key=key,
        env=env,
        process=process,
        _pg_url=pg_url,
        _sqlite_path=None if pg_url else tmp_dir / "llmsite.sqlite3",
        log_path=log_path,
    )

    def stop() -> None:
        process.terminate()
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        if pg_url:
            _pg_drop(admin_pg, pg_name)

    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            stop()
            raise RuntimeError(f"manage.py serve exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{server.base_url}/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"llmsite never became ready:\n{log_path.read_text()}")
        time.sleep(0.2)
    return server, stop
