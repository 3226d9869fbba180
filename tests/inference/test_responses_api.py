"""OpenAI's Responses API (/v1/responses): the translation both ways, the
stream's events, storage, tenant isolation and usage records, through the test client."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_issue
from billing.models import UsageRecord
from inference.models import StoredResponse
from inference.responses import Plan, ResponseEvents, chat_to_response, response_plan
from llmsite.errors import InvalidRequest, UnsupportedParameter
from tests.conftest import QWEN
from tests.helpers import read_stream

URL = "/v1/responses"
HELLO = {"model": QWEN, "input": "Say hi", "max_output_tokens": 4, "temperature": 0}
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
FORCED = {
    "model": QWEN,
    "input": "What is the weather in Paris?",
    "max_output_tokens": 64,
    "temperature": 0,
    "tools": [WEATHER],
    "tool_choice": {"type": "function", "name": "get_weather"},
}


# -- request translation ----------------------------------------------------------------------
def test_a_string_input_and_instructions_become_chat_messages(db):
    plan = response_plan(
        {**HELLO, "instructions": "Be brief.", "user": "u-1", "top_p": 0.9}, tenant=None
    )
    assert plan.chat == {
        "model": QWEN,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi"},
        ],
        "max_tokens": 4,
        "temperature": 0,
        "top_p": 0.9,
        "user": "u-1",
    }
    (item,) = plan.items
    assert item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "Say hi"}]
    assert plan.store and plan.echo["instructions"] == "Be brief."


def test_function_call_items_join_the_assistant_turn_and_outputs_become_tool_messages(db):
    plan = response_plan(
        {
            "model": QWEN,
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_prev",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "get_weather",
                    "arguments": '{"city":"Rome"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "Rain"}],
                },
            ],
        },
        tenant=None,
    )
    messages = plan.chat["messages"]
    assert messages[0] == {"role": "developer", "content": "Use tools."}
    assert messages[2] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
    ]
    assert plan.chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    assert plan.chat["tool_choice"] == "required"
    assert plan.chat["parallel_tool_calls"] is False
    assert plan.items[2]["id"] == "msg_prev"
    assert [i["id"][:3] for i in plan.items[3:]] == ["fc_", "fc_", "fco", "fco"]


def test_text_format_becomes_chat_response_format(db):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    plan = response_plan({**HELLO, "text": {"format": fmt}}, tenant=None)
    assert plan.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    plan = response_plan({**HELLO, "text": {"format": {"type": "json_object"}}}, tenant=None)
    assert plan.chat["response_format"] == {"type": "json_object"}
    plan = response_plan({**HELLO, "text": {"format": {"type": "text"}}}, tenant=None)
    assert "response_format" not in plan.chat


def test_forced_function_and_stream_translate(db):
    plan = response_plan({**FORCED, "stream": True}, tenant=None)
    assert plan.chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert plan.chat["stream_options"] == {"include_usage": True}
    assert plan.echo["tool_choice"] == {"type": "function", "name": "get_weather"}


def test_no_op_values_of_unimplemented_fields_are_accepted(db):
    plan = response_plan(
        {
            **HELLO,
            "background": False,
            "truncation": "disabled",
            "include": [],
            "reasoning": None,
            "service_tier": "auto",
        },
        tenant=None,
    )
    assert plan.chat["messages"] == [{"role": "user", "content": "Say hi"}]


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ({**HELLO, "background": True}, UnsupportedParameter, "background"),
        ({**HELLO, "reasoning": {"effort": "high"}}, UnsupportedParameter, "reasoning"),
        ({**HELLO, "include": ["reasoning.encrypted_content"]}, UnsupportedParameter, "include"),
        ({**HELLO, "truncation": "auto"}, UnsupportedParameter, "truncation"),
        ({**HELLO, "prompt": {"id": "pmpt_1"}}, UnsupportedParameter, "prompt"),
        ({**HELLO, "conversation": "conv_1"}, UnsupportedParameter, "conversation"),
        ({**HELLO, "frobnicate": 1}, InvalidRequest, "frobnicate"),
        ({**HELLO, "tools": [{"type": "web_search"}]}, UnsupportedParameter, "tools.0.type"),
        ({**HELLO, "tools": [{"type": "file_search"}]}, UnsupportedParameter, "tools.0.type"),
        (
            {**HELLO, "tools": [{"type": "code_interpreter", "container": {}}]},
            UnsupportedParameter,
            "tools.0.type",
        ),
        (
            {**HELLO, "tool_choice": {"type": "web_search_preview"}},
            UnsupportedParameter,
            "tool_choice",
        ),
        (
            {**HELLO, "input": [{"type": "reasoning", "summary": []}]},
            UnsupportedParameter,
            "input.0.type",
        ),
        (
            {
                **HELLO,
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
            },
            UnsupportedParameter,
            "input.0.content.0.type",
        ),
        (
            {**HELLO, "input": [{"type": "function_call_output", "call_id": "c", "output": "?"}]},
            InvalidRequest,
            "input.0.call_id",
        ),
        ({**HELLO, "input": [{"role": "tool", "content": "x"}]}, InvalidRequest, "input.0.role"),
        ({**HELLO, "max_output_tokens": 0}, InvalidRequest, "max_output_tokens"),
        ({**HELLO, "metadata": {"k": 1}}, InvalidRequest, "metadata"),
        (
            {**HELLO, "text": {"format": {"type": "json_schema"}}},
            InvalidRequest,
            "text.format.name",
        ),
        ({k: v for k, v in HELLO.items() if k != "input"}, InvalidRequest, "input"),
        ({**HELLO, "input": ["x"] * 600}, InvalidRequest, "input"),
    ],
)
def test_unsupported_or_invalid_fields_are_refused_by_name(db, body, error, param):
    with pytest.raises(error) as exc:
        response_plan(body, tenant=None)
    assert exc.value.param == param
    assert param in exc.value.message


# -- response translation ---------------------------------------------------------------------
def chat_answer(message: dict, finish: str) -> dict:
    return {
        "id": "chatcmpl-abc",
        "model": QWEN,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def plan_for(body: dict) -> Plan:
    return response_plan(body, tenant=None)


def test_a_text_answer_cut_by_the_limit_is_an_incomplete_response(db):
    answer = chat_to_response(
        chat_answer({"role": "assistant", "content": "Hi!"}, "length"), plan_for(HELLO)
    )
    assert answer["object"] == "response" and answer["id"].startswith("resp_")
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    (item,) = answer["output"]
    assert item["type"] == "message" and item["status"] == "incomplete"
    assert item["content"][0]["text"] == "Hi!"
    assert answer["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 18,
    }
    assert answer["max_output_tokens"] == 4 and answer["temperature"] == 0


def test_tool_calls_become_function_call_items(db):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    answer = chat_to_response(
        chat_answer({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"),
        plan_for(FORCED),
    )
    assert answer["status"] == "completed" and answer["incomplete_details"] is None
    (item,) = answer["output"]
    assert item["type"] == "function_call" and item["id"].startswith("fc_")
    assert (item["call_id"], item["name"], item["arguments"]) == (
        "call_1",
        "get_weather",
        '{"city":"Paris"}',
    )
    assert answer["tools"] == [{**WEATHER, "strict": None}]


def test_streamed_chunks_become_response_events_in_order(db):
    events = ResponseEvents(plan_for(FORCED), model=QWEN)
    base = {"id": "chatcmpl-x", "model": QWEN}
    call_start = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Let me"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": " check."}}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [call_start]}}]},
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                }
            ],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                }
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9}},
    ]
    out = events.start() + [e for c in chunks for e in events.feed(c)] + events.finish_events()
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert out[0]["response"]["status"] == "in_progress" and out[0]["response"]["output"] == []
    message_id = out[2]["item"]["id"]
    assert {e["item_id"] for e in out[3:8]} == {message_id} == {out[8]["item"]["id"]}
    assert out[2]["item"]["status"] == "in_progress" and out[2]["item"]["content"] == []
    assert out[6]["text"] == "Let me check." == out[8]["item"]["content"][0]["text"]
    call = out[9]["item"]
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_1", "get_weather", "")
    assert out[12]["arguments"] == '{"city":"Paris"}' == out[13]["item"]["arguments"]
    assert out[13]["item"]["id"] == call["id"]
    final = out[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["usage"]["input_tokens"] == 11 and final["usage"]["output_tokens"] == 9


def test_a_stream_cut_by_the_limit_ends_incomplete(db):
    events = ResponseEvents(plan_for(HELLO), model=QWEN)
    out = events.start()
    out += events.feed({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    out += events.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    out += events.finish_events()
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out[-2]["item"]["status"] == "incomplete"


# -- the endpoints ------------------------------------------------------------------------------
@pytest.fixture
def qclient(api_key, qwen) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return c


@pytest.fixture
def other_client(other_tenant, qwen) -> APIClient:
    _, raw = api_key_issue(tenant=other_tenant, name="other")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return c


def post(client, body, **extra):
    return client.post(URL, json.dumps(body), content_type="application/json", **extra)


def stream_events(response) -> list[tuple[str, dict]]:
    frames = [f for f in read_stream(response).split("\n\n") if f]
    out = []
    for frame in frames:
        name, data = frame.split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def endpoints() -> list[tuple[str, str]]:
    return list(UsageRecord.objects.order_by("id").values_list("endpoint", "status"))


def test_a_response_is_answered_stored_and_recorded_once(qclient, tenant):
    r = post(qclient, {**HELLO, "metadata": {"run": "1"}})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "response" and body["status"] in ("completed", "incomplete")
    assert body["model"] == QWEN and body["metadata"] == {"run": "1"}
    (item,) = body["output"]
    assert item["type"] == "message" and item["content"][0]["text"]
    assert 1 <= body["usage"]["output_tokens"] <= 4
    assert r["x-llmsite-model"] == QWEN
    assert endpoints() == [("responses", "ok")]
    row = StoredResponse.objects.get(response_id=body["id"])
    assert row.tenant == tenant and row.response == body
    got = qclient.get(f"{URL}/{body['id']}")
    assert got.status_code == 200 and got.json() == body


def test_streamed_responses_are_named_events_in_openais_order(qclient):
    r = post(qclient, {**HELLO, "stream": True})
    assert r.status_code == 200 and r["Content-Type"].startswith("text/event-stream")
    events = stream_events(r)
    names = [name for name, _ in events]
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert names[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert deltas and final["output"][0]["content"][0]["text"] == deltas
    assert final["usage"]["output_tokens"] >= 1
    assert endpoints() == [("responses", "ok")]
    assert qclient.get(f"{URL}/{final['id']}").json()["output"] == final["output"]


def test_store_false_keeps_nothing(qclient):
    body = post(qclient, {**HELLO, "store": False}).json()
    assert body["store"] is False
    assert not StoredResponse.objects.exists()
    r = qclient.get(f"{URL}/{body['id']}")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_another_tenants_response_is_a_404_to_read_list_delete_or_continue(qclient, other_client):
    body = post(qclient, HELLO).json()
    rid = body["id"]
    for r in (
        other_client.get(f"{URL}/{rid}"),
        other_client.get(f"{URL}/{rid}/input_items"),
        other_client.delete(f"{URL}/{rid}"),
        post(other_client, {**HELLO, "previous_response_id": rid}),
    ):
        assert r.status_code == 404
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert StoredResponse.objects.filter(response_id=rid).exists()
    assert qclient.get(f"{URL}/{rid}").status_code == 200


def test_delete_answers_deleted_then_404(qclient):
    rid = post(qclient, HELLO).json()["id"]
    r = qclient.delete(f"{URL}/{rid}")
    assert r.status_code == 200
    assert r.json() == {"id": rid, "object": "response.deleted", "deleted": True}
    assert qclient.get(f"{URL}/{rid}").status_code == 404
    assert qclient.delete(f"{URL}/{rid}").status_code == 404


def test_an_expired_response_is_absent_and_pruned(qclient):
    rid = post(qclient, HELLO).json()["id"]
    StoredResponse.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert qclient.get(f"{URL}/{rid}").status_code == 404
    r = post(qclient, {**HELLO, "previous_response_id": rid})
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    post(qclient, HELLO)  # storing prunes what expired
    assert not StoredResponse.objects.filter(response_id=rid).exists()


def test_previous_response_id_continues_a_function_call_round_trip(qclient):
    first = post(qclient, FORCED)
    assert first.status_code == 200, first.content
    answer = first.json()
    (call,) = [i for i in answer["output"] if i["type"] == "function_call"]
    assert call["name"] == "get_weather" and "city" in json.loads(call["arguments"])
    follow = {
        "model": QWEN,
        "previous_response_id": answer["id"],
        "tools": [WEATHER],
        "max_output_tokens": 8,
        "temperature": 0,
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny"}],
    }
    r = post(qclient, follow)
    assert r.status_code == 200, r.content
    second = r.json()
    assert second["previous_response_id"] == answer["id"]
    assert second["usage"]["input_tokens"] > answer["usage"]["input_tokens"]
    items = qclient.get(f"{URL}/{second['id']}/input_items", {"order": "asc"}).json()
    types = [i["type"] for i in items["data"]]
    assert types == ["message", "function_call", "function_call_output"]
    assert items["data"][1]["id"] == call["id"] and items["data"][1]["call_id"] == call["call_id"]
    assert items["first_id"] == items["data"][0]["id"] and items["has_more"] is False


def test_input_items_page_with_limit_order_and_after(qclient):
    body = {**HELLO, "input": [{"role": "user", "content": f"line {n}"} for n in range(5)]}
    rid = post(qclient, body).json()["id"]
    url = f"{URL}/{rid}/input_items"
    page = qclient.get(url, {"limit": 2}).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["line 4", "line 3"]
    assert page["has_more"] is True
    rest = qclient.get(url, {"limit": 10, "after": page["last_id"]}).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["line 2", "line 1", "line 0"]
    assert rest["has_more"] is False
    for query, param in (({"limit": 0}, "limit"), ({"order": "up"}, "order"), ({"x": 1}, "x")):
        r = qclient.get(url, query)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_refused_request_is_a_400_naming_the_field_and_one_record(qclient):
    r = post(qclient, {**HELLO, "tools": [{"type": "web_search"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "tools.0.type" and "web_search" in error["message"]
    assert endpoints() == [("responses", "error")]


def test_unknown_model_and_missing_key(qclient, anon_client):
    r = post(qclient, {**HELLO, "model": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert post(anon_client, HELLO).status_code == 401
    assert anon_client.get(f"{URL}/resp_x").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer sk-llm-nope")
    assert post(bad, HELLO).status_code == 401


def test_json_schema_text_format_answers_json_matching_the_schema(qclient):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    body = {
        **HELLO,
        "input": "Name a city in France.",
        "max_output_tokens": 40,
        "text": {"format": {"type": "json_schema", "name": "city", "schema": schema}},
    }
    r = post(qclient, body)
    assert r.status_code == 200, r.content
    answer = r.json()
    assert answer["status"] == "completed"
    value = json.loads(answer["output"][0]["content"][0]["text"])
    assert set(value) == {"city"} and isinstance(value["city"], str)
    assert answer["text"]["format"]["name"] == "city"


def test_unknown_response_id_is_404_in_openais_shape(qclient):
    r = qclient.get(f"{URL}/resp_nope")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Response with id 'resp_nope' not found."
    assert endpoints() == [("responses.retrieve", "error")]


def test_responses_are_in_the_openapi_schema_and_real_answers_fit_it(qclient):
    from django.test import Client

    from tests.inference.test_openapi import assert_fits

    schema = Client().get("/api/schema/?format=json").json()
    paths = schema["paths"]
    assert "post" in paths["/v1/responses"]
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert "get" in paths["/v1/responses/{response_id}/input_items"]
    answer = post(qclient, FORCED).json()
    assert_fits(schema, "ResponseObject", answer)
    assert_fits(schema, "ResponseObject", post(qclient, HELLO).json())
    for _, data in stream_events(post(qclient, {**FORCED, "stream": True})):
        assert_fits(schema, "ResponseStreamEvent", data)
    for _, data in stream_events(post(qclient, {**HELLO, "stream": True})):
        assert_fits(schema, "ResponseStreamEvent", data)
    items = qclient.get(f"{URL}/{answer['id']}/input_items").json()
    assert_fits(schema, "ResponseItemList", items)
    assert_fits(schema, "ResponseDeleted", qclient.delete(f"{URL}/{answer['id']}").json())
    assert_fits(schema, "ErrorResponse", qclient.get(f"{URL}/{answer['id']}").json())


def test_a_streamed_stored_response_continues_like_a_whole_one(qclient):
    events = stream_events(post(qclient, {**FORCED, "stream": True}))
    final = events[-1][1]["response"]
    (call,) = [i for i in final["output"] if i["type"] == "function_call"]
    added = [d["item"] for n, d in events if n == "response.output_item.added"]
    assert call["id"] in {i["id"] for i in added}
    pieces = [
        d["delta"]
        for n, d in events
        if n == "response.function_call_arguments.delta" and d["item_id"] == call["id"]
    ]
    assert "".join(pieces) == call["arguments"]
    follow = {
        "model": QWEN,
        "previous_response_id": final["id"],
        "max_output_tokens": 4,
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny"}],
    }
    r = post(qclient, follow)
    assert r.status_code == 200, r.content
    assert [e for e, _ in endpoints()] == ["responses", "responses"]


def test_over_the_rate_limit_is_a_429_with_the_headers(qclient, fresh_minute):
    from io import StringIO

    from django.core.management import call_command

    call_command("set_quota", "--tenant", "acme", "--rpm", "1", stdout=StringIO())
    first = post(qclient, HELLO)
    assert first.status_code == 200, first.content
    assert first["x-ratelimit-remaining-requests"] == "0"
    r = post(qclient, HELLO)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(r["Retry-After"]) >= 1
    assert sorted(UsageRecord.objects.values_list("status", flat=True)) == ["ok", "rejected"]
