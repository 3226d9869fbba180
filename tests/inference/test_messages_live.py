"""/v1/messages under a live daphne on loopback, driven by the official `anthropic` SDK."""

from __future__ import annotations

import time
import uuid

import anthropic
import pytest

from tests import live

CHAT = "qwen2.5-coder-0.5b-instruct"
MESSAGES = [{"role": "user", "content": "Name three colours."}]
# The current SDK no longer names sampling parameters; older clients send them.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, stop = live.start(tmp_path_factory.mktemp("live-messages"))
    yield srv
    stop()


@pytest.fixture(scope="module")
def sdk(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def tagged() -> tuple[str, dict]:
    request_id = f"live-msg-{uuid.uuid4().hex}"
    return request_id, {"X-Request-Id": request_id}


def records(server, request_id: str, *, wait: float = 30.0) -> list[tuple]:
    """The request's usage records, once the server's `finally` has written one."""
    deadline = time.monotonic() + wait
    while True:
        rows = server.query(
            "SELECT endpoint, status, prompt_tokens, completion_tokens FROM billing_usagerecord "
            "WHERE request_id = ?",
            (request_id,),
        )
        if rows or time.monotonic() > deadline:
            time.sleep(0.3)  # a second record, were there one, would have landed by now
            return server.query(
                "SELECT endpoint, status, prompt_tokens, completion_tokens "
                "FROM billing_usagerecord WHERE request_id = ?",
                (request_id,),
            )
        time.sleep(0.1)


def test_sdk_messages_create(server, sdk):
    request_id, headers = tagged()
    message = sdk.messages.create(
        model=CHAT,
        max_tokens=12,
        extra_body=GREEDY,
        system="Answer in one line.",
        messages=MESSAGES,
        extra_headers=headers,
    )
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.model == CHAT
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= message.usage.output_tokens <= 12
    assert records(server, request_id) == [
        ("messages", "ok", message.usage.input_tokens, message.usage.output_tokens)
    ]


def test_sdk_messages_stream_matches_create(server, sdk):
    request_id, headers = tagged()
    with sdk.messages.stream(
        model=CHAT, max_tokens=12, extra_body=GREEDY, messages=MESSAGES, extra_headers=headers
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    plain = sdk.messages.create(model=CHAT, max_tokens=12, extra_body=GREEDY, messages=MESSAGES)
    assert plain.content[0].text == text
    assert final.stop_reason == plain.stop_reason
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert records(server, request_id) == [
        ("messages", "ok", final.usage.input_tokens, final.usage.output_tokens)
    ]


def test_sdk_raw_stream_events_come_in_anthropics_order(sdk):
    events = list(
        sdk.messages.create(
            model=CHAT, max_tokens=4, extra_body=GREEDY, messages=MESSAGES, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 4


def test_a_stream_left_early_is_still_one_record(server, sdk):
    request_id, headers = tagged()
    with sdk.messages.stream(
        model=CHAT,
        max_tokens=400,
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
        extra_headers=headers,
    ) as stream:
        for _ in stream.text_stream:
            break
    (row,) = records(server, request_id)
    assert row[0] == "messages" and row[2] > 0 and 1 <= row[3] < 400


def test_sdk_count_tokens_equals_input_tokens(server, sdk):
    request_id, headers = tagged()
    counted = sdk.messages.count_tokens(
        model=CHAT, system="Answer in one line.", messages=MESSAGES, extra_headers=headers
    )
    message = sdk.messages.create(
        model=CHAT, max_tokens=1, system="Answer in one line.", messages=MESSAGES
    )
    assert counted.input_tokens == message.usage.input_tokens > 0
    assert [r[:2] for r in records(server, request_id)] == [("messages.count_tokens", "ok")]


def test_sdk_count_tokens_takes_an_alias(server, sdk):
    server.manage("add_alias", "live-chat", "--strategy", "quality-first", "--models", CHAT)
    counted = sdk.messages.count_tokens(model="live-chat", messages=MESSAGES)
    message = sdk.messages.create(model="live-chat", max_tokens=1, messages=MESSAGES)
    assert message.model == CHAT
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_sdk_stop_sequence_whole_and_streamed(sdk):
    ask = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = sdk.messages.create(model=CHAT, max_tokens=24, extra_body=GREEDY, messages=ask)
    text = free.content[0].text
    # A few characters from the middle of the free answer, found nowhere earlier.
    stop = next(
        text[i : i + 3]
        for i in range(len(text) // 2, len(text) - 2)
        if text[i : i + 3].strip() and text.find(text[i : i + 3]) > 0
    )
    kwargs = dict(
        model=CHAT,
        max_tokens=24,
        extra_body=GREEDY,
        messages=ask,
        stop_sequences=["never in the text", stop],
    )
    message = sdk.messages.create(**kwargs)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == text[: text.find(stop)]
    with sdk.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert streamed == message.content[0].text and stop not in streamed


def test_sdk_typed_errors(server, sdk):
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="sk-llm-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        bad.messages.create(model=CHAT, max_tokens=1, messages=MESSAGES)
    assert exc.value.status_code == 401
    assert exc.value.request_id
    assert exc.value.type == "authentication_error"
    request_id, headers = tagged()
    with pytest.raises(anthropic.NotFoundError) as exc:
        sdk.messages.create(
            model="no-such-model", max_tokens=1, messages=MESSAGES, extra_headers=headers
        )
    assert exc.value.type == "not_found_error"
    assert [r[:2] for r in records(server, request_id)] == [("messages", "error")]
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk.messages.create(model=CHAT, max_tokens=1, messages=MESSAGES, extra_body={"top_k": 5})
    assert exc.value.type == "invalid_request_error"
    assert "top_k" in exc.value.message


def test_bearer_auth_token_works_too(server):
    client = anthropic.Anthropic(base_url=server.base_url, auth_token=server.api_key, max_retries=0)
    message = client.messages.create(model=CHAT, max_tokens=2, messages=MESSAGES)
    assert message.usage.output_tokens >= 1


def test_sdk_tool_use_round_trip_whole_and_streamed(server, sdk):
    tools = [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "tool", "name": "get_weather"}
    request_id, headers = tagged()
    message = sdk.messages.create(
        model=CHAT,
        max_tokens=64,
        tools=tools,
        tool_choice=forced,
        messages=ask,
        extra_body=GREEDY,
        extra_headers=headers,
    )
    (call,) = [b for b in message.content if b.type == "tool_use"]
    assert isinstance(call, anthropic.types.ToolUseBlock) and "city" in call.input
    assert message.stop_reason == "tool_use"
    assert [r[:2] for r in records(server, request_id)] == [("messages", "ok")]
    with sdk.messages.stream(
        model=CHAT, max_tokens=64, tools=tools, tool_choice=forced, messages=ask, extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == call.input and final.stop_reason == "tool_use"
    answer = sdk.messages.create(
        model=CHAT,
        max_tokens=8,
        tools=tools,
        messages=[
            *ask,
            {"role": "assistant", "content": message.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ],
    )
    assert answer.content and answer.content[0].type == "text"
