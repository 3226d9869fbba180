"""Two real llmsite servers on loopback: a front node routing to an inference node.

The front holds the tenants, quotas and usage; the back serves the model. The
front reaches the back as an `openai` backend with a key the back issued.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests import live

REMOTE = "upstream-qwen"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    back, stop_back = live.start(tmp_path_factory.mktemp("back"))
    try:
        front, stop_front = live.start(tmp_path_factory.mktemp("front"))
    except BaseException:
        stop_back()
        raise
    front.manage(
        "add_remote_model",
        REMOTE,
        f"{back.base_url}/v1",
        "--remote-model",
        "qwen2.5-coder-0.5b-instruct",
        "--key-stdin",
        "--quality",
        "0.9",
        stdin=back.api_key + "\n",
    )
    front.manage("add_alias", "two-node", "--strategy", "quality-first", "--models", REMOTE)
    yield front, back
    stop_front()
    stop_back()


def records(server, request_id: str, wait: float = 30.0) -> list[tuple]:
    deadline = time.monotonic() + wait
    while True:
        rows = server.query(
            "SELECT model_id, status, prompt_tokens, completion_tokens FROM billing_usagerecord "
            "WHERE request_id = ?",
            (request_id,),
        )
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_front_node_serves_the_back_nodes_model_and_bills_it(nodes):
    front, back = nodes
    sdk = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key=front.api_key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model=REMOTE,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6,
        temperature=0,
    )
    result = raw.parse()
    assert result.model == REMOTE
    assert raw.headers["x-llmsite-model"] == REMOTE
    assert result.choices[0].message.content
    assert result.usage.completion_tokens > 0
    [(model_id, status, prompt, completion)] = records(front, raw.headers["x-request-id"])
    assert (model_id, status) == (REMOTE, "ok")
    # Billed on the front exactly as the back counted with the model's tokenizer.
    assert (prompt, completion) == (result.usage.prompt_tokens, result.usage.completion_tokens)
    back_rows = back.query(
        "SELECT model_id, prompt_tokens, completion_tokens FROM billing_usagerecord "
        "WHERE endpoint = 'chat.completions'"
    )
    assert ("qwen2.5-coder-0.5b-instruct", prompt, completion) in back_rows


def test_streaming_through_the_front_node_with_usage(nodes):
    front, _ = nodes
    sdk = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key=front.api_key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="two-node",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "strategy=quality-first" in raw.headers["x-llmsite-route"]
    chunks = list(raw.parse())
    assert {c.model for c in chunks} == {REMOTE}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 8
    [(_, status, prompt, completion)] = records(front, raw.headers["x-request-id"])
    assert (status, prompt, completion) == ("ok", usage.prompt_tokens, 8)


def test_completions_and_errors_pass_through(nodes):
    front, _ = nodes
    headers = {"Authorization": f"Bearer {front.api_key}"}
    r = httpx.post(
        f"{front.base_url}/v1/completions",
        json={"model": REMOTE, "prompt": "One, two,", "max_tokens": 3, "temperature": 0},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200
    assert r.json()["object"] == "text_completion" and r.json()["model"] == REMOTE
    # The back node's own validation reaches the caller unchanged.
    r = httpx.post(
        f"{front.base_url}/v1/completions",
        json={"model": REMOTE, "prompt": "x", "max_tokens": 100000},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_a_client_leaving_a_stream_cancels_it_on_both_nodes(nodes):
    front, back = nodes
    with httpx.stream(
        "POST",
        f"{front.base_url}/v1/completions",
        json={"model": REMOTE, "prompt": "Once upon a time", "max_tokens": 400, "stream": True},
        headers={"Authorization": f"Bearer {front.api_key}"},
        timeout=60,
    ) as r:
        request_id = r.headers["x-request-id"]
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen >= 3:
                break
    [(_, status, _, completion)] = records(front, request_id)
    assert status == "cancelled"
    assert 3 <= completion < 400
    # The back node saw its client (the front) leave too, and stopped generating.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = back.query(
            "SELECT status, completion_tokens FROM billing_usagerecord "
            "WHERE endpoint = 'completions' ORDER BY id DESC LIMIT 1"
        )
        if rows and rows[0][0] == "cancelled":
            break
        time.sleep(0.2)
    assert rows[0][0] == "cancelled" and rows[0][1] < 400
