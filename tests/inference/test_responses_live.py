"""/v1/responses under a live daphne on loopback, driven by the official `openai` SDK."""

from __future__ import annotations

import json
import time
import uuid

import jsonschema
import openai
import pytest

from tests import live

CHAT = "qwen2.5-coder-0.5b-instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = "What is the weather in Paris?"
FORCED = {"type": "function", "name": "get_weather"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, stop = live.start(tmp_path_factory.mktemp("live-responses"))
    yield srv
    stop()


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def other_sdk(server):
    key = server.manage("create_api_key", "--tenant", "other", "--name", "other")
    raw = key.strip().splitlines()[-1]
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=raw, max_retries=0)


def tagged() -> tuple[str, dict]:
    request_id = f"live-resp-{uuid.uuid4().hex}"
    return request_id, {"X-Request-Id": request_id}


def records(server, request_id: str, *, wait: float = 30.0) -> list[tuple]:
    """The request's usage records, once the server's `finally` has written one."""
    sql = (
        "SELECT endpoint, status, prompt_tokens, completion_tokens FROM billing_usagerecord "
        "WHERE request_id = ?"
    )
    deadline = time.monotonic() + wait
    while True:
        rows = server.query(sql, (request_id,))
        if rows or time.monotonic() > deadline:
            time.sleep(0.3)  # a second record, were there one, would have landed by now
            return server.query(sql, (request_id,))
        time.sleep(0.1)


def test_sdk_responses_create(server, sdk):
    request_id, headers = tagged()
    response = sdk.responses.create(
        model=CHAT,
        instructions="Answer in one line.",
        input="Name three colours.",
        max_output_tokens=12,
        temperature=0,
        metadata={"case": "create"},
        extra_headers=headers,
    )
    assert isinstance(response, openai.types.responses.Response)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == CHAT and response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.output[0].type == "message" and response.output[0].id.startswith("msg_")
    assert response.metadata == {"case": "create"}
    assert 1 <= response.usage.output_tokens <= 12
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert records(server, request_id) == [
        ("responses", "ok", response.usage.input_tokens, response.usage.output_tokens)
    ]


def test_sdk_responses_stream_text_matches_the_final_response(server, sdk):
    request_id, headers = tagged()
    with sdk.responses.stream(
        model=CHAT,
        input="Name three colours.",
        max_output_tokens=12,
        temperature=0,
        extra_headers=headers,
    ) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == text and done.item_id == final.output[0].id
    assert records(server, request_id) == [
        ("responses", "ok", final.usage.input_tokens, final.usage.output_tokens)
    ]
    assert sdk.responses.retrieve(final.id).output_text == text


def test_a_stream_left_early_is_still_one_record(server, sdk):
    request_id, headers = tagged()
    with sdk.responses.stream(
        model=CHAT,
        input="Write a long story about the sea.",
        max_output_tokens=400,
        extra_headers=headers,
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    (row,) = records(server, request_id)
    assert row[0] == "responses" and row[2] > 0 and 1 <= row[3] < 400


def test_a_function_call_round_trip_through_previous_response_id(server, sdk):
    request_id, headers = tagged()
    with sdk.responses.stream(
        model=CHAT,
        input=ASK,
        tools=[WEATHER],
        tool_choice=FORCED,
        max_output_tokens=64,
        temperature=0,
        extra_headers=headers,
    ) as stream:
        first = stream.get_final_response()
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    assert [r[:2] for r in records(server, request_id)] == [("responses", "ok")]
    second = sdk.responses.create(
        model=CHAT,
        previous_response_id=first.id,
        tools=[WEATHER],
        max_output_tokens=8,
        temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
    )
    assert second.previous_response_id == first.id and second.output
    assert second.usage.input_tokens > first.usage.input_tokens
    items = list(sdk.responses.input_items.list(second.id, order="asc", limit=1))
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == call.call_id


def test_a_function_call_round_trip_with_the_items_passed_back_by_hand(sdk):
    ask = [{"role": "user", "content": ASK}]
    first = sdk.responses.create(
        model=CHAT,
        input=ask,
        tools=[WEATHER],
        tool_choice=FORCED,
        max_output_tokens=64,
        temperature=0,
        store=False,
    )
    assert first.store is False
    (call,) = [item for item in first.output if item.type == "function_call"]
    second = sdk.responses.create(
        model=CHAT,
        tools=[WEATHER],
        max_output_tokens=8,
        temperature=0,
        store=False,
        input=[
            *ask,
            *first.output,
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
    )
    assert second.output and second.usage.input_tokens > first.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)


def test_json_schema_text_format_parses_as_json_matching_the_schema(sdk):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    response = sdk.responses.create(
        model=CHAT,
        input="Name a city and its country.",
        max_output_tokens=48,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


def test_get_and_delete_are_tenant_scoped(server, sdk, other_sdk):
    created = sdk.responses.create(model=CHAT, input="Hi", max_output_tokens=2)
    assert sdk.responses.retrieve(created.id).id == created.id
    with pytest.raises(openai.NotFoundError) as exc:
        other_sdk.responses.retrieve(created.id)
    assert exc.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        other_sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        other_sdk.responses.create(
            model=CHAT, input="Hi", max_output_tokens=2, previous_response_id=created.id
        )
    assert sdk.responses.retrieve(created.id).id == created.id
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ],
)
def test_unsupported_features_are_400s_naming_the_field(server, sdk, extra, param):
    request_id, headers = tagged()
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.responses.create(
            model=CHAT, input="Hi", max_output_tokens=2, extra_headers=headers, **extra
        )
    assert exc.value.param == param and param in exc.value.message
    assert [r[:2] for r in records(server, request_id)] == [("responses", "error")]
