"""A client that leaves right after a stream's headers, under a live daphne."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests import live

MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, stop = live.start(tmp_path_factory.mktemp("disconnect"))
    yield srv
    stop()


def usage_rows(server, request_id: str, wait: float = 60.0) -> list[tuple]:
    deadline = time.monotonic() + wait
    while True:
        rows = server.query(
            "SELECT status, completion_tokens FROM billing_usagerecord WHERE request_id = ?",
            (request_id,),
        )
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_a_client_gone_right_after_the_headers_ends_the_generation_and_is_billed(server):
    request_id = f"gone-{uuid.uuid4().hex}"
    max_tokens = 2000
    body = {
        "model": MODEL,
        "prompt": "Write a very long story about the sea.",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {server.api_key}", "X-Request-Id": request_id}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.base_url}/v1/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200  # headers only: leave before reading any of the body
    (row,) = usage_rows(server, request_id)
    status, completion_tokens = row
    assert status == "cancelled"
    assert completion_tokens < max_tokens
    # The engine is free again: the next request completes normally.
    with httpx.Client(timeout=120) as http:
        after = http.post(
            f"{server.base_url}/v1/completions",
            json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0},
            headers={"Authorization": f"Bearer {server.api_key}"},
        )
    assert after.json()["usage"]["completion_tokens"] == 2
