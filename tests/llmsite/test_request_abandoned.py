"""A client that closes its socket as soon as the request is sent, under a live daphne.

Django cancels the view on `http.disconnect`. Either a service had already taken
the request (then it wrote its one usage record), or none had: then nothing was
reserved or generated, and llmsite_requests_abandoned_total counts it instead.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid

import httpx
import pytest

from tests import live

MODEL = "gemma-3-270m"
ABANDONED = "llmsite_requests_abandoned_total"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, stop = live.start(tmp_path_factory.mktemp("abandoned"))
    # One slot: a lease left held would refuse the next request.
    srv.manage("set_quota", "--tenant", "live", "--concurrent", "1")
    yield srv
    stop()


def abandoned(server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(f"{ABANDONED} "):
            return float(line.split()[1])
    raise AssertionError(f"{ABANDONED} missing from /metrics")


def records(server, request_id: str) -> list[tuple]:
    return server.query(
        "SELECT status FROM billing_usagerecord WHERE request_id = ?", (request_id,)
    )


def send_and_leave(server, request_id: str) -> None:
    url = httpx.URL(server.base_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=30)
    body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 200, "stream": True}
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={
            "Authorization": f"Bearer {server.api_key}",
            "X-Request-Id": request_id,
            "Content-Type": "application/json",
        },
    )
    conn.close()


def test_a_request_dropped_on_send_is_recorded_or_counted_as_abandoned(server):
    before = abandoned(server)
    request_id = f"dropped-{uuid.uuid4().hex}"
    send_and_leave(server, request_id)
    deadline = time.monotonic() + 60
    while True:
        rows, counted = records(server, request_id), abandoned(server) - before
        if rows or counted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # a record would have landed by now had the request been counted too
    rows, counted = records(server, request_id), abandoned(server) - before
    assert (len(rows), counted) in {(1, 0), (0, 1)}, (rows, counted)
    if rows:
        assert rows[0][0] in {"cancelled", "ok"}
    # No concurrency lease left held: the one slot serves the next request.
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def test_a_request_answered_is_not_counted_as_abandoned(server):
    before = abandoned(server)
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=120,
    )
    assert r.status_code == 200
    assert abandoned(server) == before
