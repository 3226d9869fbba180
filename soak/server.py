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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


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
