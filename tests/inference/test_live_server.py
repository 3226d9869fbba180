"""llmsite under a live daphne on loopback, driven by the official `openai` SDK and raw HTTP."""

from __future__ import annotations

import json
import math
import re
import time
import uuid

import httpx
import openai
import pytest

from tests import live

MODEL = "gemma-3-270m"
CHAT = "qwen2.5-coder-0.5b-instruct"  # the default chat model; Gemma is a base model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, stop = live.start(tmp_path_factory.mktemp("live"))
    yield srv
    stop()


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


def usage_rows(server, request_id: str, *, expect: int = 1, wait: float = 30.0):
    """The usage records of one request, waiting for the server's `finally` to land them."""
    deadline = time.monotonic() + wait
    while True:
        rows = server.query(
            "SELECT status, prompt_tokens, completion_tokens FROM billing_usagerecord "
            "WHERE request_id = ?",
            (request_id,),
        )
        if len(rows) >= expect or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_sdk_lists_and_retrieves_models(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert MODEL in ids
    assert sdk.models.retrieve(MODEL).id == MODEL


def test_sdk_completion(sdk):
    result = sdk.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert result.object == "text_completion"
    assert result.choices[0].text
    assert result.usage.completion_tokens == 5
    assert result.choices[0].finish_reason == "length"


def test_sdk_chat(sdk):
    result = sdk.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=6,
        temperature=0,
    )
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_sdk_streaming_chat_with_usage_matches_non_streamed(sdk):
    messages = [{"role": "user", "content": "Name three colours."}]
    stream = sdk.chat.completions.create(
        model=CHAT,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    plain = sdk.chat.completions.create(model=CHAT, messages=messages, max_tokens=12, temperature=0)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_sdk_streaming_completion(sdk):
    stream = sdk.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 2
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sdk_embeddings(sdk):
    result = sdk.embeddings.create(model=MODEL, input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    vec = result.data[0].embedding
    assert len(vec) == 640
    assert math.sqrt(sum(x * x for x in vec)) == pytest.approx(1.0, abs=1e-4)
    # The SDK asks for base64 by default when numpy is around; ask explicitly too.
    b64 = sdk.embeddings.create(model=MODEL, input="alpha", encoding_format="base64")
    assert len(b64.data[0].embedding) == 640 or isinstance(b64.data[0].embedding, str)


def test_sdk_typed_errors(server, sdk):
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-llm-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.models.list()
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.completions.create(model="no-such-model", prompt="x")
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=3
        )
    assert exc.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.completions.create(model=MODEL, prompt="x", best_of=2)
    assert exc.value.param == "best_of"


def test_stream_reaches_client_before_generation_ends_and_disconnect_stops_it(server, sdk):
    request_id = f"live-{uuid.uuid4().hex}"
    max_tokens = 1500
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
        http.stream(
            "POST", f"{server.base_url}/v1/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == request_id
        first = None
        for line in response.iter_lines():
            if line.startswith("data: "):
                first = json.loads(line[6:])
                break
        assert first["choices"][0]["text"] is not None
        # Disconnect now, long before max_tokens could have been generated.
    (row,) = usage_rows(server, request_id)
    status, prompt_tokens, completion_tokens = row
    assert status == "cancelled"
    assert prompt_tokens > 0
    # Had the server buffered the stream, the whole completion would have been
    # generated before the first chunk left; instead it stopped when we left.
    assert 1 <= completion_tokens < max_tokens
    # The engine is free: the next request is served and completes normally.
    after = sdk.completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0)
    assert after.usage.completion_tokens == 2


def test_every_response_has_request_id_and_processing_time(server):
    r = httpx.get(
        f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {server.api_key}"}
    )
    assert r.headers["x-request-id"].startswith("req_")
    assert int(r.headers["openai-processing-ms"]) >= 0


def test_swagger_ui_assets_are_served_by_the_app_not_a_cdn(server):
    page = httpx.get(f"{server.base_url}/api/docs/")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert assets, page.text
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert httpx.get(f"{server.base_url}{asset}").status_code == 200
    schema = httpx.get(f"{server.base_url}/api/schema/")
    assert schema.status_code == 200 and "/v1/completions" in schema.text
