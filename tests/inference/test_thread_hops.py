"""The request path's crossings from the event loop to a thread, counted.

Each crossing waits for a thread and for the GIL: issue #8 asks for one or two
per request. Django's ASGI handler makes two of its own: rendering the response
(a DRF Response renders lazily) and closing it. Its third, for the sync
receivers of request_started, is gone: llmsite.apps disconnects Django's two,
which have nothing to do at a request's start here.
A warm /v1 request (its key and route cached) adds two: authenticating (DRF's
sync authentication reads the AuthGeneration counters) and committing its usage
record; on the database quota path the reservation is a transaction of its own,
on Redis it is not a crossing. Django's middleware hooks run on the loop
(llmsite.middleware); a short prompt with nothing to convert is planned there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.test import AsyncClient

from billing.services import limits_set
from llmsite.apps import request_started_quiet
from tests.conftest import quota_backends
from tests.helpers import embedded_env

pytestmark = pytest.mark.django_db(transaction=True)

# Django's own, per request, whatever the view.
HANDLER = [
    "SimpleTemplateResponse.render",
    "HttpResponseBase.close",
]


def _auth(api_key: str) -> dict:
    # AsyncClient(headers=...) lands in the ASGI scope, not in its headers.
    return {"Authorization": f"Bearer {api_key}"}


def _hops(monkeypatch) -> list[str]:
    names: list[str] = []
    original = SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        names.append(getattr(self.func, "__qualname__", type(self.func).__name__))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counting)
    return names


@pytest.mark.parametrize("quota_backend", quota_backends())
@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/completions", {"model": "gemma-3-270m", "prompt": "Hello"}),
        (
            "/v1/chat/completions",
            {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}]},
        ),
    ],
)
async def test_a_warm_request_crosses_to_a_thread_only_for_the_database(
    api_key, tenant, gemma, settings, monkeypatch, quota_backend, url, body
):
    settings.LLMSITE_QUOTA_BACKEND = quota_backend
    # Every kind of limit on: the reservation and the settlement both happen.
    await sync_to_async(limits_set)(
        tenant=tenant, rpm=1000, tpm=10**6, tokens_per_day=10**7, max_concurrent=10
    )
    client = AsyncClient()
    body = {**body, "max_tokens": 1, "temperature": 0}
    # Requests per minute count per calendar minute: both requests in the same one.
    if (into_minute := time.time() % 60) > 50:
        await asyncio.sleep(60 - into_minute)
    first = await client.post(url, body, content_type="application/json", headers=_auth(api_key))
    assert first.status_code == 200, first.content  # and the caches are warm
    # As in a server: Django's test utilities (assertNumQueries) reconnect them.
    request_started_quiet()
    hops = _hops(monkeypatch)
    response = await client.post(url, body, content_type="application/json", headers=_auth(api_key))
    assert response.status_code == 200, response.content
    assert response["x-ratelimit-remaining-requests"] == "998"
    ours = ["APIView.initial", "Accounting._finish"]
    if quota_backend == "db":
        ours = ["APIView.initial", "quota_reserve", "Accounting._finish"]
    assert sorted(h for h in hops if h not in HANDLER) == sorted(ours), hops
    assert "Signal.asend.<locals>.sync_send" not in hops  # no crossing before the middleware


def test_request_started_has_no_receiver_that_would_cross_to_a_thread():
    # In a process of its own: Django's test client reconnects close_old_connections.
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.core.signals import request_started as s; "
            "print('sync receivers:', len(s._live_receivers(None)[0]))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=embedded_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "sync receivers: 0" in result.stdout


async def test_a_long_prompt_is_planned_in_a_thread(api_key, gemma, monkeypatch):
    client = AsyncClient()
    body = {"model": "gemma-3-270m", "prompt": "word " * 400, "max_tokens": 1}
    first = await client.post(
        "/v1/completions", body, content_type="application/json", headers=_auth(api_key)
    )
    assert first.status_code == 200, first.content
    hops = _hops(monkeypatch)
    response = await client.post(
        "/v1/completions", body, content_type="application/json", headers=_auth(api_key)
    )
    assert response.status_code == 200
    assert "LocalBackend.prepare.<locals>.plan" in hops, hops
