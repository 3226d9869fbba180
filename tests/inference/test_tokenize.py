from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_issue, tenant_models_set
from tests.conftest import MODEL, QWEN

pytestmark = pytest.mark.django_db

TOKENIZE, DETOKENIZE = "/tokenize", "/detokenize"
MESSAGE = {"role": "user", "content": "y"}


def tokenize(client, **body):
    body.setdefault("model", QWEN)
    return client.post(TOKENIZE, body, format="json")


def test_tokenize_then_detokenize_round_trips(client, qwen):
    text = "def add(a, b):\n    return a + b  # café ✓"
    r = tokenize(client, content=text)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 5
    assert body["max_model_len"] == qwen.n_ctx
    assert all(isinstance(t, int) for t in body["tokens"])
    back = client.post(DETOKENIZE, {"model": QWEN, "tokens": body["tokens"]}, format="json")
    assert back.status_code == 200, back.content
    assert back.json() == {"content": text}


def test_pieces_spell_each_token(client, qwen):
    r = tokenize(client, content="Hello world", with_pieces=True)
    tokens = r.json()["tokens"]
    assert "".join(t["piece"] for t in tokens) == "Hello world"
    assert all(set(t) == {"id", "piece"} and isinstance(t["id"], int) for t in tokens)


def test_messages_count_what_a_chat_completion_is_billed(client, qwen):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = tokenize(client, messages=messages, with_pieces=True)
    assert r.status_code == 200, r.content
    pieces = "".join(t["piece"] for t in r.json()["tokens"])
    assert pieces.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    chat = client.post(
        "/v1/chat/completions",
        {"model": QWEN, "messages": messages, "max_tokens": 1},
        format="json",
    )
    assert chat.json()["usage"]["prompt_tokens"] == r.json()["count"]
    # Without the generation prompt the assistant turn is not opened.
    bare = tokenize(client, messages=messages, add_generation_prompt=False)
    assert bare.json()["count"] == r.json()["count"] - 3


def test_messages_with_tools_and_tool_turns_render_through_the_template(client, qwen):
    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
    ]
    r = tokenize(client, messages=messages, tools=tools, with_pieces=True)
    assert r.status_code == 200, r.content
    text = "".join(t["piece"] for t in r.json()["tokens"])
    assert '{"name": "now", "arguments": {}}' in text and "<tool_response>\n12:00\n" in text


def test_add_special_follows_the_models_tokenizer(client, gemma):
    with_bos = tokenize(client, model=MODEL, content="Hi").json()["tokens"]
    without = tokenize(client, model=MODEL, content="Hi", add_special=False).json()["tokens"]
    assert with_bos == [2, *without]  # Gemma asks for BOS (id 2)


def test_no_key_is_401(anon_client):
    for url in (TOKENIZE, DETOKENIZE):
        r = anon_client.post(url, {"model": QWEN, "content": "x"}, format="json")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_bad_key_is_401(qwen):
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Bearer sk-llm-nope_nope")
    r = tokenize(c, content="x")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404(client):
    r = tokenize(client, model="no-such-model", content="x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post(DETOKENIZE, {"model": "no-such-model", "tokens": [1]}, format="json")
    assert r.status_code == 404


def test_a_model_outside_the_tenants_list_is_404(client, tenant, gemma, qwen):
    tenant_models_set(tenant=tenant, models=[gemma])
    r = tokenize(client, content="x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_key_without_inference_scope_is_403(tenant, qwen):
    _, raw = api_key_issue(tenant=tenant, scopes=["usage:read"])
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert tokenize(c, content="x").status_code == 403


@pytest.mark.parametrize(
    ("url", "body", "param"),
    [
        (TOKENIZE, {"model": QWEN}, "content"),
        (TOKENIZE, {"model": QWEN, "content": "x", "messages": [{"role": "user"}]}, None),
        (TOKENIZE, {"model": QWEN, "content": "x", "messages": [MESSAGE]}, "content"),
        (TOKENIZE, {"model": QWEN, "content": ["x"]}, "content"),
        (TOKENIZE, {"model": QWEN, "content": "x" * 300_000}, "content"),
        (TOKENIZE, {"model": QWEN, "messages": [{"role": "robot", "content": "x"}]}, None),
        (TOKENIZE, {"model": QWEN, "content": "x", "tools": [{"type": "function"}]}, "tools"),
        (TOKENIZE, {"model": QWEN, "content": "x", "prompt": "y"}, "prompt"),
        (DETOKENIZE, {"model": QWEN, "tokens": "abc"}, "tokens"),
        (DETOKENIZE, {"model": QWEN, "tokens": [-1]}, "tokens"),
        (DETOKENIZE, {"model": QWEN, "tokens": [10**9]}, "tokens"),
        (DETOKENIZE, {"model": QWEN}, "tokens"),
    ],
)
def test_invalid_bodies_are_400(client, qwen, url, body, param):
    r = client.post(url, body, format="json")
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert (error["param"] or "").startswith(param), error


def test_tokenizer_endpoints_are_in_the_openapi_schema(client):
    r = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    paths = r.json()["paths"]
    assert "post" in paths["/tokenize"] and "post" in paths["/detokenize"]
