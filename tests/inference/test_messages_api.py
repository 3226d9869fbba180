"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens): the
translation both ways, and the endpoints through the test client."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.services import api_key_issue
from billing.models import UsageRecord
from inference.anthropic import MessageEvents, chat_to_message, messages_to_chat
from llmsite.errors import InvalidRequest, UnsupportedParameter
from tests.conftest import MODEL, QWEN
from tests.helpers import read_stream

URL, COUNT = "/v1/messages", "/v1/messages/count_tokens"
HELLO = {
    "model": QWEN,
    "max_tokens": 4,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Say hi"}],
}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


# -- request translation ----------------------------------------------------------------------
def test_system_and_text_blocks_become_chat_messages():
    chat = messages_to_chat(
        {
            "model": "m",
            "max_tokens": 8,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ],
            "stop_sequences": ["\n\n"],
            "temperature": 0.5,
            "top_p": 0.9,
            "metadata": {"user_id": "u-1"},
        }
    )
    assert chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        "max_tokens": 8,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "user": "u-1",
    }


def test_tool_use_and_tool_result_blocks_become_tool_calls_and_tool_messages():
    chat = messages_to_chat(
        {
            "model": "m",
            "max_tokens": 8,
            "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                        {"type": "text", "text": "Thanks."},
                    ],
                },
            ],
        }
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city.",
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "user", "content": "Thanks."},
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice_maps_to_openais(choice, expected, parallel):
    chat = messages_to_chat(
        {
            "model": "m",
            "max_tokens": 1,
            "tools": [WEATHER],
            "tool_choice": choice,
            "messages": [{"role": "user", "content": "x"}],
        }
    )
    assert chat["tool_choice"] == expected
    assert chat.get("parallel_tool_calls") == parallel


def test_a_tool_result_marked_as_error_says_so():
    chat = messages_to_chat(
        {
            "model": "m",
            "max_tokens": 1,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "is_error": True,
                            "content": [{"type": "text", "text": "boom"}],
                        }
                    ],
                }
            ],
        }
    )
    assert chat["messages"] == [{"role": "tool", "tool_call_id": "t", "content": "Error: boom"}]


def test_stream_asks_for_usage_and_count_tokens_needs_no_max_tokens():
    assert messages_to_chat({**HELLO, "stream": True})["stream_options"] == {"include_usage": True}
    counted = messages_to_chat({"model": "m", "messages": HELLO["messages"]}, count_only=True)
    assert "max_tokens" not in counted


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ({**HELLO, "top_k": 5}, UnsupportedParameter, "top_k"),
        ({**HELLO, "thinking": {"type": "enabled"}}, UnsupportedParameter, "thinking"),
        ({**HELLO, "frobnicate": 1}, InvalidRequest, "frobnicate"),
        ({k: v for k, v in HELLO.items() if k != "max_tokens"}, InvalidRequest, "max_tokens"),
        ({**HELLO, "max_tokens": 0}, InvalidRequest, "max_tokens"),
        ({**HELLO, "messages": []}, InvalidRequest, "messages"),
        (
            {**HELLO, "messages": [{"role": "system", "content": "x"}]},
            InvalidRequest,
            "messages.0.role",
        ),
        (
            {**HELLO, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            UnsupportedParameter,
            "messages.0.content.0.type",
        ),
        (
            {**HELLO, "tools": [{"type": "web_search_20250305", "name": "w"}]},
            UnsupportedParameter,
            "tools.0.type",
        ),
        ({**HELLO, "metadata": {"session": "x"}}, InvalidRequest, "metadata.session"),
        ({**HELLO, "tool_choice": {"type": "sometimes"}}, InvalidRequest, "tool_choice"),
    ],
)
def test_unsupported_or_invalid_fields_are_refused_by_name(body, error, param):
    with pytest.raises(error) as exc:
        messages_to_chat(body)
    assert exc.value.param == param
    assert param in exc.value.message


# -- response translation ---------------------------------------------------------------------
def chat_answer(message: dict, finish: str) -> dict:
    return {
        "id": "chatcmpl-abc123",
        "model": QWEN,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def test_a_text_answer_becomes_a_message():
    msg = chat_to_message(chat_answer({"role": "assistant", "content": "Hi!"}, "length"))
    assert msg == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": QWEN,
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_tool_calls_become_tool_use_blocks():
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    msg = chat_to_message(
        chat_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
    )
    assert msg["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert msg["stop_reason"] == "tool_use"


def test_streamed_chunks_become_anthropic_events_in_order():
    events = MessageEvents(input_tokens=11)
    base = {"id": "chatcmpl-x", "model": QWEN}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Let me"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": " check."}}]},
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Paris"}'}}]
                    },
                }
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9}},
    ]
    out = [e for chunk in chunks for e in events.feed(chunk)] + events.finish()
    names = [name for name, _ in out]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [d for _, d in out]
    assert data[0]["message"]["usage"]["input_tokens"] == 11
    assert data[1]["content_block"] == {"type": "text", "text": ""}
    assert data[2]["delta"] == {"type": "text_delta", "text": "Let me"}
    assert data[5] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
    }
    assert data[6]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    assert data[8] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }


def test_a_stop_string_is_a_stop_sequence_and_the_models_own_end_an_end_turn():
    answer = chat_answer({"role": "assistant", "content": "1, 2"}, "stop")
    assert chat_to_message(answer)["stop_reason"] == "end_turn"
    msg = chat_to_message(answer, ", 3")
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("stop_sequence", ", 3")
    events = MessageEvents(input_tokens=3)
    events.feed({"id": "chatcmpl-x", "choices": [{"index": 0, "finish_reason": "stop"}]})
    (delta,) = [d for name, d in events.finish(", 3") if name == "message_delta"]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": ", 3"}


# -- the endpoints ------------------------------------------------------------------------------
@pytest.fixture
def key_client(api_key, qwen) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_X_API_KEY=api_key, HTTP_ANTHROPIC_VERSION="2023-06-01")
    return c


def post(client, url, body, **extra):
    return client.post(url, json.dumps(body), content_type="application/json", **extra)


def test_messages_answers_in_anthropics_shape_with_x_api_key(key_client):
    r = post(key_client, URL, HELLO, HTTP_X_REQUEST_ID="msg-plain")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["type"] == "message" and body["id"].startswith("msg_")
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"]
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert body["usage"]["output_tokens"] <= 4
    assert r["x-llmsite-model"] == QWEN
    rows = list(UsageRecord.objects.values_list("endpoint", "status"))
    assert rows == [("messages", "ok")]


def test_count_tokens_equals_the_input_tokens_inference_reports(key_client):
    body = {**HELLO, "system": "Be brief."}
    count = post(
        key_client, COUNT, {k: v for k, v in body.items() if k not in ("max_tokens", "temperature")}
    )
    assert count.status_code == 200, count.content
    assert set(count.json()) == {"input_tokens"}
    answer = post(key_client, URL, body).json()
    assert count.json()["input_tokens"] == answer["usage"]["input_tokens"]


def stream_events(response) -> list[dict]:
    frames = [f for f in read_stream(response).split("\n\n") if f]
    return [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]


def streamed_text(events: list[dict]) -> str:
    return "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")


def stop_inside(text: str) -> str:
    """A few characters from the middle of `text`, found nowhere earlier in it."""
    for start in range(len(text) // 2, len(text) - 2):
        stop = text[start : start + 3]
        if stop.strip() and text.find(stop) > 0:
            return stop
    raise AssertionError(f"no stop string to take from {text!r}")


COUNTING = {
    "model": QWEN,
    "max_tokens": 24,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
}


def test_a_stop_sequence_hit_is_named_whole_and_streamed(key_client, client):
    free = post(key_client, URL, COUNTING).json()
    text = free["content"][0]["text"]
    assert free["stop_sequence"] is None and free["stop_reason"] != "stop_sequence"
    stop = stop_inside(text)
    body = {**COUNTING, "stop_sequences": ["never in the text", stop]}

    whole = post(key_client, URL, body).json()
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("stop_sequence", stop)
    assert whole["content"] == [{"type": "text", "text": text[: text.find(stop)]}]

    events = stream_events(post(key_client, URL, {**body, "stream": True}))
    (delta,) = [e for e in events if e["type"] == "message_delta"]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    assert streamed_text(events) == text[: text.find(stop)]

    # OpenAI's chat shape says "stop" for a stop string, and nothing more.
    chat = post(client, "/v1/chat/completions", {**COUNTING, "stop": [stop]}).json()
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["choices"][0]["message"]["content"] == text[: text.find(stop)]


def test_the_models_own_end_is_end_turn_even_with_stop_sequences(key_client):
    body = {**HELLO, "max_tokens": 64, "stop_sequences": ["never in the text"]}
    whole = post(key_client, URL, body).json()
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("end_turn", None)
    events = stream_events(post(key_client, URL, {**body, "stream": True}))
    (delta,) = [e for e in events if e["type"] == "message_delta"]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_count_tokens_routes_an_alias_as_create_does(key_client, gemma):
    # Two models with their own templates and tokenizers, taking turns: each
    # count names the model the next create gets, and takes no turn from it.
    call_command("add_alias", "turns", "--strategy", "round-robin", "--models", f"{QWEN},{MODEL}")
    body = {**HELLO, "model": "turns", "system": "Be brief."}
    counted_body = {k: v for k, v in body.items() if k not in ("max_tokens", "temperature")}
    answered = []
    for _ in range(2):
        count = post(key_client, COUNT, counted_body)
        assert count.status_code == 200, count.content
        answer = post(key_client, URL, body)
        assert count["x-llmsite-model"] == answer["x-llmsite-model"]
        assert count.json()["input_tokens"] == answer.json()["usage"]["input_tokens"]
        answered.append(answer["x-llmsite-model"])
    assert sorted(answered) == sorted([QWEN, MODEL])


def test_count_tokens_takes_auto(key_client):
    body = {**HELLO, "model": "auto"}
    counted_body = {k: v for k, v in body.items() if k not in ("max_tokens", "temperature")}
    count = post(key_client, COUNT, counted_body)
    assert count.status_code == 200, count.content
    answer = post(key_client, URL, body)
    assert count["x-llmsite-model"] == answer["x-llmsite-model"]
    assert count.json()["input_tokens"] == answer.json()["usage"]["input_tokens"]


def test_count_tokens_of_an_unknown_name_is_not_found_error(key_client):
    r = post(key_client, COUNT, {"model": "no-such-alias", "messages": HELLO["messages"]})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    rows = list(UsageRecord.objects.values_list("endpoint", "status"))
    assert rows == [("messages.count_tokens", "error")]


def test_streamed_messages_are_anthropics_events(key_client):
    r = post(key_client, URL, {**HELLO, "stream": True})
    assert r.status_code == 200 and r["Content-Type"].startswith("text/event-stream")
    frames = [f for f in read_stream(r).split("\n\n") if f]
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    datas = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(d["type"] == n for n, d in zip(names, datas, strict=True))
    assert "ping" in names
    text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    assert text
    assert datas[-2]["usage"]["output_tokens"] >= 1
    assert list(UsageRecord.objects.values_list("endpoint", flat=True)) == ["messages"]


def test_no_key_is_an_anthropic_401(qwen):
    r = post(APIClient(), URL, HELLO)
    assert r.status_code == 401
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"


def test_bad_x_api_key_is_401(qwen):
    c = APIClient()
    c.credentials(HTTP_X_API_KEY="sk-llm-nope")
    r = post(c, URL, HELLO)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    c.credentials(HTTP_X_API_KEY="not-a-key")
    assert post(c, URL, HELLO).status_code == 401


def test_two_different_credentials_are_401(api_key, tenant, qwen):
    _, other = api_key_issue(tenant=tenant, name="other")
    c = APIClient()
    c.credentials(HTTP_X_API_KEY=api_key, HTTP_AUTHORIZATION=f"Bearer {other}")
    assert post(c, URL, HELLO).status_code == 401


def test_key_without_inference_scope_is_a_permission_error(tenant, qwen):
    _, raw = api_key_issue(tenant=tenant, scopes=["usage:read"])
    c = APIClient()
    c.credentials(HTTP_X_API_KEY=raw)
    r = post(c, URL, HELLO)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_unknown_model_is_not_found_error(key_client):
    r = post(key_client, URL, {**HELLO, "model": "no-such-model"})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    assert UsageRecord.objects.get().endpoint == "messages"


def test_invalid_body_is_invalid_request_error_and_one_record(key_client):
    r = post(key_client, URL, {**HELLO, "top_k": 3})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "top_k" in r.json()["error"]["message"]
    assert list(UsageRecord.objects.values_list("endpoint", "status")) == [("messages", "error")]


def test_bearer_keys_work_too(client, qwen):
    r = post(client, URL, HELLO)
    assert r.status_code == 200, r.content


def test_messages_are_in_the_openapi_schema(client):
    paths = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    assert "post" in paths["/v1/messages"] and "post" in paths["/v1/messages/count_tokens"]


def test_real_answers_fit_the_openapi_schema(key_client):
    from django.test import Client

    from tests.inference.test_openapi import assert_fits

    schema = Client().get("/api/schema/?format=json").json()
    body = {**HELLO, "system": "Be brief."}
    assert_fits(schema, "AnthropicMessage", post(key_client, URL, body).json())
    r = post(key_client, URL, {**body, "stream": True})
    for frame in filter(None, read_stream(r).split("\n\n")):
        assert_fits(schema, "AnthropicStreamEvent", json.loads(frame.split("\n")[1][6:]))
    counted = {k: v for k, v in body.items() if k not in ("max_tokens", "temperature")}
    assert_fits(schema, "AnthropicCountTokensResponse", post(key_client, COUNT, counted).json())
    assert_fits(
        schema, "AnthropicErrorResponse", post(key_client, URL, {**body, "model": "x"}).json()
    )


def test_a_tool_use_and_tool_result_conversation_is_answered_and_counted(key_client):
    """The round trip's second half: the model reads its call and the result
    (rendered by Qwen's template as tool turns) and answers in text."""
    body = {
        "model": QWEN,
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Sunny, 24C"}
                ],
            },
        ],
    }
    counted = post(key_client, COUNT, body)
    assert counted.status_code == 200, counted.content
    r = post(key_client, URL, {**body, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.content
    answer = r.json()
    assert answer["usage"]["input_tokens"] == counted.json()["input_tokens"]
    assert answer["content"] and answer["stop_reason"] in ("end_turn", "max_tokens", "tool_use")


def test_a_tool_result_for_no_call_is_a_400(key_client):
    body = {
        **HELLO,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}],
            }
        ],
    }
    r = post(key_client, URL, body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_over_the_rate_limit_is_a_rate_limit_error_with_the_headers(key_client, fresh_minute):
    from io import StringIO

    from django.core.management import call_command

    call_command("set_quota", "--tenant", "acme", "--rpm", "1", stdout=StringIO())
    first = post(key_client, URL, HELLO)
    assert first.status_code == 200, first.content
    assert first["x-ratelimit-remaining-requests"] == "0"
    r = post(key_client, URL, HELLO)
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert int(r["Retry-After"]) >= 1
    statuses = sorted(UsageRecord.objects.values_list("status", flat=True))
    assert statuses == ["ok", "rejected"]


# -- tools end to end (needs tool calling in the chat service) -------------------------------

FORCED = {
    "model": QWEN,
    "max_tokens": 64,
    "temperature": 0,
    "tools": [{**WEATHER, "input_schema": {**WEATHER["input_schema"], "required": ["city"]}}],
    "tool_choice": {"type": "tool", "name": "get_weather"},
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
}


def test_a_tool_use_round_trip(key_client):
    r = post(key_client, URL, FORCED)
    assert r.status_code == 200, r.content
    answer = r.json()
    (call,) = [b for b in answer["content"] if b["type"] == "tool_use"]
    assert call["name"] == "get_weather" and isinstance(call["input"].get("city"), str)
    assert answer["stop_reason"] == "tool_use"
    follow = {
        **FORCED,
        "tool_choice": {"type": "none"},
        "max_tokens": 8,
        "messages": [
            *FORCED["messages"],
            {"role": "assistant", "content": answer["content"]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny"}],
            },
        ],
    }
    r = post(key_client, URL, follow)
    assert r.status_code == 200, r.content
    assert r.json()["content"][0]["type"] == "text"
    assert r.json()["stop_reason"] in ("end_turn", "max_tokens")


def test_a_streamed_tool_use_comes_as_input_json_deltas(key_client):
    whole = post(key_client, URL, FORCED).json()
    r = post(key_client, URL, {**FORCED, "stream": True})
    frames = [f for f in read_stream(r).split("\n\n") if f]
    datas = [json.loads(f.split("\n")[1][6:]) for f in frames]
    starts = [d for d in datas if d["type"] == "content_block_start"]
    (tool,) = [d for d in starts if d["content_block"]["type"] == "tool_use"]
    assert tool["content_block"]["name"] == "get_weather"
    pieces = [
        d["delta"]["partial_json"]
        for d in datas
        if d["type"] == "content_block_delta" and d["index"] == tool["index"]
    ]
    (whole_call,) = [b for b in whole["content"] if b["type"] == "tool_use"]
    assert json.loads("".join(pieces)) == whole_call["input"]
    (delta,) = [d for d in datas if d["type"] == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use"
