"""A tool loop with the official `openai` SDK against llmsite under a live daphne."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests import live

CHAT = "qwen2.5-coder-0.5b-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server, stop = live.start(tmp_path_factory.mktemp("live-tools"))
    yield server
    stop()


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


def worker_stats(server) -> dict:
    """The chat model's engine counters, as its worker process last reported them."""
    return json.loads(server.manage("models", "status"))[CHAT]["stats"]


def test_sdk_tool_loop_call_then_result_then_text(sdk):
    first = sdk.chat.completions.create(
        model=CHAT,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"

    result = json.dumps({"city": "Paris", "temperature_c": 18, "sky": "clear"})
    messages = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    # This 0.5B model tends to call again after a result: the protocol is what
    # is tested here, not its judgement.
    second = sdk.chat.completions.create(
        model=CHAT,
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=16,
        temperature=0,
    )
    (reply,) = second.choices
    assert not reply.message.tool_calls
    assert reply.finish_reason in {"stop", "length"} and reply.message.content
    # The call and its result reached the prompt: the same request grew by
    # both turns (the template prints the call's JSON and the result's text).
    grown = second.usage.prompt_tokens - first.usage.prompt_tokens
    assert grown > len(result) // 4 + len(call.function.arguments) // 4


def test_sdk_stream_helper_assembles_streamed_tool_calls(sdk):
    whole = sdk.chat.completions.create(
        model=CHAT,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    events = []
    with sdk.chat.completions.stream(
        model=CHAT,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    ) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    (expected,) = whole.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == (
        expected.function.name,
        expected.function.arguments,
    )
    assert call.id.startswith("call_")


def test_auto_call_runs_under_the_lazy_grammar_in_the_model_worker(sdk, server):
    before = worker_stats(server)["lazy_grammars_triggered"]
    reply = sdk.chat.completions.create(
        model=CHAT, messages=ASK, tools=[WEATHER], max_tokens=40, temperature=0
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    # The trigger words and patterns crossed the process boundary: the worker's
    # engine ran the lazy grammar and the call started it (reported on its
    # next heartbeat).
    deadline = time.monotonic() + 60
    while worker_stats(server)["lazy_grammars_triggered"] == before:
        assert time.monotonic() < deadline, "the worker never reported the triggered grammar"
        time.sleep(0.5)
