"""A live llmsite under daphne for the reliability suite, on PostgreSQL + Redis.

It reuses the test suite's live server (tests/live.py): a fresh database beside
DATABASE_URL, migrated, with a tenant and an API key, daphne on a free loopback
port, preloaded models. This adds a signed-in owner (for a JWT) and the
server's RSS.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
PASSWORD = "soak-Owner-passphrase-42"


def _setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmsite.settings")
    import django

    django.setup()


def process_tree(pid: int) -> list[int]:
    """`pid`, its children, their children and so on (from /proc)."""
    found = [pid]
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:  # the task ended meanwhile
                continue
            found.extend(children)
            todo.extend(children)
    return found


def rss_bytes(pid: int) -> int:
    """The resident memory of `pid` and all its descendants: the gateway and the
    model worker processes it started, where llama.cpp's weights and KV caches live."""
    total = 0
    for each in process_tree(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:  # a child that ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    if total == 0:
        raise RuntimeError(f"no VmRSS for {pid}")
    return total


@contextmanager
def live_server(extra_env: dict | None = None):
    """Yield (server, jwt) for a daphne on PostgreSQL + Redis; stop and drop it after."""
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    _setup_django()
    import httpx

    from tests.live import start

    # Redis outlives the run: its counters get keys of their own.
    env = {"LLMSITE_QUOTA_PREFIX": f"llmsite:soak:{uuid.uuid4().hex[:12]}", **(extra_env or {})}
    with tempfile.TemporaryDirectory(prefix="llmsite-soak-") as tmp:
        server, stop = start(Path(tmp), extra_env=env)
        try:
            server.manage(
                "create_user",
                "soakowner",
                "--tenant",
                "live",
                "--role",
                "owner",
                stdin=PASSWORD + "\n",
            )
            r = httpx.post(
                f"{server.base_url}/api/auth/token/",
                json={"username": "soakowner", "password": PASSWORD},
                timeout=30,
            )
            r.raise_for_status()
            yield server, r.json()["access"]
        finally:
            stop()
