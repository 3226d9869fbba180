"""A tool loop with the official `openai` SDK against llmsite under a live daphne."""

from __future__ import annotations

import json

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
def sdk(tmp_path_factory):
    server, stop = live.start(tmp_path_factory.mktemp("live-tools"))
    yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
    stop()


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
