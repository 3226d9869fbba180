"""Tool calling end to end: the real Qwen GGUF over REST, SSE, WebSocket and
batch, and a remote backend's upstream `tool_calls` rendered the same way."""

from __future__ import annotations

import json

import jsonschema
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from accounts.authentication import Principal
from accounts.services import api_key_issue, tenant_get_or_create
from billing.models import UsageRecord
from inference import services
from inference.models import LLMModel
from inference.registry import registry
from llmsite.asgi import application
from tests.conftest import MODEL, QWEN
from tests.helpers import sse_chunks, sse_events
from tests.inference.fake_openai import CALLS, FakeOpenAI

URL = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now."}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# Enough for one call ({"name": ..., "arguments": {...}} in its tags) and its end.
CALL_TOKENS = 48


def post(client, request_id: str | None = None, **body):
    body = {"model": QWEN, "messages": ASK, "temperature": 0, **body}
    headers = {"HTTP_X_REQUEST_ID": request_id} if request_id else {}
    return client.post(URL, body, format="json", **headers)


def records(request_id: str) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(request_id=request_id))


def streamed_completion(chunks: list[dict], tools: list[dict]):
    """The OpenAI SDK's own assembly of streamed chunks into one completion."""
    state = ChatCompletionStreamState(input_tools=tools)
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def call_items(chunks: list[dict]) -> list[dict]:
    """Every `delta.tool_calls` item of a stream, in order."""
    return [
        item
        for chunk in chunks
        for choice in chunk["choices"]
        for item in choice["delta"].get("tool_calls", ())
    ]


def assert_valid_weather_call(call: dict) -> dict:
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return arguments


# -- the real model, forced ---------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_a_forced_choice_is_a_tool_calls_message_with_valid_arguments(client, qwen, choice):
    r = post(client, "tc-whole", tools=[WEATHER, TIME], tool_choice=choice, max_tokens=CALL_TOKENS)
    assert r.status_code == 200, r.content
    body = r.json()
    (choice_out,) = body["choices"]
    assert choice_out["finish_reason"] == "tool_calls"
    message = choice_out["message"]
    assert message["role"] == "assistant" and message["content"] is None
    (call,) = message["tool_calls"]
    assert assert_valid_weather_call(call)["city"] == "Paris"
    usage = body["usage"]
    (record,) = records("tc-whole")
    assert record.status == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert 0 < usage["completion_tokens"] <= CALL_TOKENS


@pytest.mark.django_db
@pytest.mark.parametrize("choice", ["required", NAMED], ids=["required", "named"])
def test_a_forced_choice_streams_call_deltas_the_sdk_assembles(client, qwen, choice):
    r = post(
        client,
        "tc-stream",
        tools=[WEATHER, TIME],
        tool_choice=choice,
        max_tokens=CALL_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.status_code == 200
    chunks = sse_chunks(sse_events(r))
    pieces = call_items(chunks)
    first, *rest = pieces
    assert first["index"] == 0 and first["type"] == "function"
    assert first["id"].startswith("call_") and first["function"]["name"] == "get_weather"
    assert rest and all(set(p) == {"index", "function"} for p in rest)
    assert all(set(p["function"]) == {"arguments"} for p in rest)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    completion = streamed_completion(chunks[:-1], [WEATHER, TIME])
    (out,) = completion.choices
    assert out.finish_reason == "tool_calls"
    (call,) = out.message.tool_calls
    assert assert_valid_weather_call(call.model_dump())["city"] == "Paris"
    assert call.id == first["id"]

    usage = chunks[-1]["usage"]
    (record,) = records("tc-stream")
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


# -- the real model, free until it calls (a lazy grammar) ---------------------------------------
def lazy_grammars(qwen) -> tuple[int, int]:
    """The engine's count of jobs run with a lazy grammar, and of those it triggered."""
    stats = registry.engine_for(qwen).stats()
    return stats["lazy_grammars"], stats["lazy_grammars_triggered"]


@pytest.mark.django_db
def test_auto_parses_the_call_the_model_chose_to_make(client, qwen):
    before = lazy_grammars(qwen)
    r = post(client, "tc-auto", tools=[WEATHER], max_tokens=CALL_TOKENS)
    assert r.status_code == 200, r.content
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert assert_valid_weather_call(call)["city"] == "Paris"
    assert len(records("tc-auto")) == 1
    # The job carried the lazy grammar, and the call started it.
    after = lazy_grammars(qwen)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


@pytest.mark.django_db
def test_auto_answers_in_text_when_the_tools_do_not_apply(client, qwen):
    before = lazy_grammars(qwen)
    ask = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    r = post(client, "tc-auto-text", messages=ask, tools=[WEATHER], max_tokens=16)
    assert r.status_code == 200, r.content
    (choice,) = r.json()["choices"]
    assert "tool_calls" not in choice["message"], choice
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    # The lazy grammar rode along and never fired: the text was sampled freely.
    after = lazy_grammars(qwen)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


@pytest.mark.django_db
def test_auto_with_a_response_format_holds_the_reply_to_the_format(client, qwen):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    before = lazy_grammars(qwen)
    r = post(client, tools=[WEATHER], response_format=response_format, max_tokens=CALL_TOKENS)
    assert r.status_code == 200, r.content
    # The format's grammar held the whole reply; no lazy grammar was queued.
    assert lazy_grammars(qwen)[0] == before[0]


@pytest.mark.django_db
def test_none_makes_no_call_whatever_the_model_writes(client, qwen):
    r = post(client, "tc-none", tools=[WEATHER], tool_choice="none", max_tokens=CALL_TOKENS)
    assert r.status_code == 200, r.content
    (choice,) = r.json()["choices"]
    assert "tool_calls" not in choice["message"]
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in {"stop", "length"}
    assert len(records("tc-none")) == 1


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_tools_on_a_model_whose_template_cannot_show_them_is_400_naming_tools(client, gemma):
    r = post(client, "tc-gemma", model=MODEL, tools=[WEATHER], max_tokens=4)
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["param"] == "tools" and error["type"] == "invalid_request_error"
    assert "tool_choice" in error["message"]
    (record,) = records("tc-gemma")
    assert record.status == "error" and record.completion_tokens == 0


@pytest.mark.django_db
def test_unknown_tool_in_tool_choice_is_400(client, qwen):
    choice = {"type": "function", "function": {"name": "get_stock"}}
    r = post(client, tools=[WEATHER], tool_choice=choice, max_tokens=4)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"


@pytest.mark.django_db
def test_malformed_tools_are_400_naming_tools(client, qwen):
    bad = {"type": "function", "function": {"name": "no spaces allowed"}}
    r = post(client, tools=[bad], max_tokens=4)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"


@pytest.mark.django_db
def test_a_schema_too_big_to_force_is_400_naming_tools(client, qwen):
    # Within the request bounds, but its grammar would spell out 100,000 repeats.
    huge = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 100000}}}
    tool = {"type": "function", "function": {"name": "write", "parameters": huge}}
    r = post(client, "tc-huge", tools=[tool], tool_choice="required", max_tokens=4)
    assert r.status_code == 400, r.content
    assert r.json()["error"]["param"] == "tools"
    assert len(records("tc-huge")) == 1


# -- other adapters -------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_batch_item_with_tools_answers_with_its_calls(client, qwen):
    body = {"model": QWEN, "messages": ASK, "temperature": 0, "max_tokens": CALL_TOKENS}
    items = [
        {
            "custom_id": "call",
            "url": URL,
            "body": {**body, "tools": [WEATHER], "tool_choice": NAMED},
        }
    ]
    r = client.post("/v1/batch", {"requests": items}, format="json", HTTP_X_REQUEST_ID="tc-b")
    assert r.status_code == 200, r.content
    (item,) = r.json()["data"]
    (choice,) = item["response"]["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert_valid_weather_call(choice["message"]["tool_calls"][0])
    assert [rec.request_id for rec in UsageRecord.objects.all()] == ["tc-b-0"]


@pytest.mark.django_db(transaction=True)
async def test_websocket_carries_tool_call_deltas(api_key, qwen):
    comm = WebsocketCommunicator(application, "/v1/realtime/chat")
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_json_to({"type": "auth", "token": api_key})
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    body = {
        "model": QWEN,
        "messages": ASK,
        "temperature": 0,
        "max_tokens": CALL_TOKENS,
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "w", "body": body})
    chunks, done = [], None
    while done is None:
        message = await comm.receive_json_from(timeout=300)
        assert message["type"] in {"chat.completion.chunk", "chat.completion.done"}, message
        if message["type"] == "chat.completion.chunk":
            chunks.append(message["chunk"])
        else:
            done = message
    await comm.disconnect()
    assert done["finish_reason"] == "tool_calls"
    (call,) = streamed_completion(chunks, [WEATHER]).choices[0].message.tool_calls
    assert_valid_weather_call(call.model_dump())
    count = await sync_to_async(UsageRecord.objects.filter(request_id__startswith="ws_").count)()
    assert count == 1
    from django.db import connections

    await sync_to_async(connections.close_all)()


# -- a remote backend ----------------------------------------------------------------------
@pytest.fixture
def upstream():
    with FakeOpenAI() as server:
        server.tool_calls = True
        yield server


@pytest.fixture
def far(db, upstream) -> LLMModel:
    return LLMModel.objects.create(
        model_id="far", backend="openai", base_url=upstream.base_url, path="", remote_model="up-m"
    )


def expected_calls() -> list[dict]:
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in CALLS
    ]


@pytest.mark.django_db
def test_remote_tool_calls_are_forwarded_and_relayed_whole(client, far, upstream):
    r = post(client, "tc-far", model="far", tools=[WEATHER, TIME], tool_choice="required")
    assert r.status_code == 200, r.content
    sent = upstream.bodies[-1]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0] == WEATHER
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is True
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == expected_calls()
    assert r.json()["usage"]["completion_tokens"] == 9
    (record,) = records("tc-far")
    assert (record.prompt_tokens, record.completion_tokens) == (5, 9)


@pytest.mark.django_db(transaction=True)
async def test_remote_streamed_tool_call_deltas_render_as_openai_chunks(far, upstream):
    # Through the service in one event loop: the upstream's stream belongs to
    # the loop that opened it (Django's test client reads a body in another).
    tenant = await sync_to_async(tenant_get_or_create)(slug="remote-tools")
    key, _ = await sync_to_async(api_key_issue)(tenant=tenant, name="t")
    body = {"model": "far", "messages": ASK, "tools": [WEATHER, TIME], "stream": True}
    result = await services.chat_completion_create(
        principal=Principal(tenant=tenant, api_key=key), body=body, request_id="tc-far-s"
    )
    chunks = [chunk async for chunk in result.events]
    await result.aclose()
    items = call_items(chunks)
    firsts = [item for item in items if "id" in item]
    assert [(i["index"], i["id"], i["type"], i["function"]) for i in firsts] == [
        (0, "call_up1", "function", {"name": "get_weather", "arguments": ""}),
        (1, "call_up2", "function", {"name": "get_time", "arguments": ""}),
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    message = streamed_completion(chunks, [WEATHER, TIME]).choices[0].message
    got = [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert got == [(c["id"], "function", c["name"], c["arguments"]) for c in CALLS]
    (record,) = await sync_to_async(records)("tc-far-s")
    assert (record.prompt_tokens, record.completion_tokens) == (5, 9)
    from django.db import connections

    await sync_to_async(connections.close_all)()
