from __future__ import annotations

import json
import random
import re

import jsonschema
import llama_cpp.llama_cpp as llama_lib
import pytest
from rest_framework import exceptions as drf_exceptions

from inference.chat_templates import template_messages
from inference.serializers import MAX_TOOLS, ChatCompletionRequestSerializer
from inference.tools import (
    MAX_PARALLEL_CALLS,
    ToolCallStream,
    auto_grammar,
    chosen_tools,
    forced_grammar,
    parse_tool_calls,
    reply_finish_reason,
    reply_message,
    tool_call_schema,
    tool_parser,
    tool_request,
    tool_specs,
)
from llmsite.errors import to_api_error

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
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
TIME = {"type": "function", "function": {"name": "get_time"}}
TOOLS = tool_specs([WEATHER, TIME])
USER = [{"role": "user", "content": "Weather in Paris?"}]
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


# -- request validation ------------------------------------------------------------------
def validate(**body) -> dict:
    body.setdefault("model", "m")
    body.setdefault("messages", USER)
    serializer = ChatCompletionRequestSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def error(**body):
    with pytest.raises((drf_exceptions.ValidationError, Exception)) as info:
        validate(**body)
    err = to_api_error(info.value)
    assert err is not None, info.value
    assert err.status == 400
    return err


def test_tools_are_validated_and_normalized():
    data = validate(tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert data["tools"][0] == WEATHER
    assert data["tools"][1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert data["tool_choice"] == "auto"
    assert data["parallel_tool_calls"] is False


def test_without_tools_nothing_is_added_to_forward_upstream():
    data = validate()
    assert data["tools"] is None
    assert data["tool_choice"] is None
    assert data["parallel_tool_calls"] is None
    assert validate(tool_choice="none", tools=None)["tool_choice"] == "none"
    request = tool_request(data)
    assert (request.tools, request.choice, request.template_tools) == ([], "none", None)
    assert request.grammar() is None and request.lazy_grammar() is None
    assert request.parser() is None


def test_tool_request_reads_the_validated_fields():
    choice = {"type": "function", "function": {"name": "get_time"}}
    data = validate(tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False)
    request = tool_request(data)
    assert [tool.name for tool in request.tools] == ["get_weather", "get_time"]
    assert request.template_tools == data["tools"]
    assert request.forced and request.parallel is False
    assert compiles(request.grammar())
    assert request.lazy_grammar() is None
    parser = request.parser()  # only the named tool's calls are calls
    assert parser.feed(PARIS) == [{"content": PARIS}]
    parser = request.parser()
    assert parser.feed('{"name": "get_time"}') == []  # held: it could still be a call
    assert parser.finish()[0]["tool_calls"][0]["function"]["name"] == "get_time"
    auto = tool_request(validate(tools=[WEATHER, TIME]))
    assert not auto.forced and auto.grammar() is None
    assert compiles(auto.lazy_grammar().grammar)
    none = tool_request(validate(tools=[WEATHER], tool_choice="none"))
    assert none.parser() is None and none.template_tools == [WEATHER]


def test_named_tool_choice_is_kept():
    choice = {"type": "function", "function": {"name": "get_time"}}
    assert validate(tools=[WEATHER, TIME], tool_choice=choice)["tool_choice"] == choice


def bad_tool(**function):
    return {"type": "function", "function": {"name": "f", **function}}


@pytest.mark.parametrize(
    ("tools", "where"),
    [
        ([], "tools"),
        ({"type": "function"}, "tools"),
        (["get_weather"], "tools[0]"),
        ([{"type": "code", "function": {"name": "f"}}], "tools[0].type"),
        ([{"type": "function"}], "tools[0].function"),
        ([{"type": "function", "function": {"name": "f"}, "extra": 1}], "tools[0].extra"),
        ([bad_tool(name="has space")], "tools[0].function.name"),
        ([bad_tool(name="x" * 65)], "tools[0].function.name"),
        ([bad_tool(name=7)], "tools[0].function.name"),
        ([WEATHER, WEATHER], "tools[1].function.name"),
        ([bad_tool(description=3)], "tools[0].function.description"),
        ([bad_tool(strict="yes")], "tools[0].function.strict"),
        ([bad_tool(params={})], "tools[0].function.params"),
        ([bad_tool(parameters=[])], "tools[0].function.parameters"),
        ([bad_tool(parameters={"type": "string"})], "tools[0].function.parameters"),
        ([bad_tool(parameters={"type": "objekt"})], "tools[0].function.parameters"),
        (
            [bad_tool(parameters={"type": "object", "properties": {"a": {"type": 5}}})],
            "tools[0].function.parameters",
        ),
        (
            [bad_tool(parameters={"type": "object", "$ref": "https://example.com/s.json"})],
            "tools[0].function.parameters",
        ),
        (
            [bad_tool(parameters={"type": "object", "$ref": "#/$defs/missing"})],
            "tools[0].function.parameters",
        ),
        (
            [bad_tool(parameters={"type": "object", "$ref": "$defs/a", "$defs": {"a": {}}})],
            "tools[0].function.parameters",
        ),
        (
            [bad_tool(parameters={"type": "object", "$dynamicRef": "#node"})],
            "tools[0].function.parameters",
        ),
        (
            [bad_tool(parameters={"type": "object", "properties": {"a": {"$id": "x"}}})],
            "tools[0].function.parameters",
        ),
        ([TIME, bad_tool(name="g", parameters=None), bad_tool(name="")], "tools[2].function.name"),
        ([bad_tool(name=f"f{i}") for i in range(MAX_TOOLS + 1)], "tools"),
    ],
)
def test_malformed_tools_are_400_naming_tools(tools, where):
    err = error(tools=tools)
    assert err.param == "tools"
    assert f"'{where}'" in err.message


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_deep_or_huge_schemas_are_400():
    deep = error(tools=[bad_tool(parameters=nested(40))])
    assert deep.param == "tools"
    assert "deeper" in deep.message
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    huge = error(tools=[bad_tool(parameters=wide)])
    assert huge.param == "tools"
    assert "nodes" in huge.message
    many = [bad_tool(name=f"f{i}", parameters=wide | {"properties": {}}) for i in range(2)]
    assert validate(tools=many)["tools"]  # small enough together


@pytest.mark.parametrize(
    "choice",
    [
        "always",
        {"type": "function"},
        {"type": "function", "function": {}},
        {"type": "tool", "function": {"name": "get_time"}},
        {"type": "function", "function": {"name": "nope"}},
        7,
    ],
)
def test_bad_tool_choice_is_400_naming_it(choice):
    assert error(tools=[WEATHER, TIME], tool_choice=choice).param == "tool_choice"


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_tool_choice_without_tools_is_400(choice):
    assert error(tool_choice=choice).param == "tool_choice"


def test_parallel_tool_calls_must_be_a_boolean():
    assert error(tools=[WEATHER], parallel_tool_calls="many").param == "parallel_tool_calls"


CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}
LOOP = [
    *USER,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny"}]},
]


def test_a_tool_loop_conversation_is_accepted():
    messages = validate(tools=[WEATHER], messages=LOOP)["messages"]
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}


def test_arguments_sent_as_an_object_become_json_text():
    call = {**CALL, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = validate(messages=[*USER, {"role": "assistant", "tool_calls": [call]}])["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": None},
        {"role": "user", "content": "x", "tool_calls": [CALL]},
        {"role": "assistant", "content": "x", "tool_calls": [{"id": "c"}]},
        {"role": "assistant", "content": "x", "tool_calls": [{**CALL, "type": "code"}]},
        {"role": "assistant", "content": "x", "tool_calls": [{**CALL, "id": 3}]},
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [{**CALL, "function": {"arguments": "{}"}}],
        },
        {"role": "assistant", "content": "x", "tool_calls": CALL},
        {"role": "tool", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_1"},
        {"role": "user", "content": "x", "tool_call_id": "call_1"},
    ],
)
def test_malformed_tool_messages_are_400(message):
    err = error(messages=[*USER, message])
    assert err.param.startswith("messages"), err.param


def test_deprecated_function_messages_are_refused():
    err = error(messages=[*USER, {"role": "function", "name": "f", "content": "x"}])
    assert err.code == "unsupported_parameter"


def test_a_tool_message_must_answer_a_call_before_it():
    assert error(messages=[*USER, LOOP[2]]).param == "messages"
    wrong_id = {**LOOP[2], "tool_call_id": "call_2"}
    assert error(messages=[*LOOP[:2], wrong_id]).param == "messages"
    two = [*LOOP, {**LOOP[2], "content": "again"}]
    assert validate(messages=two)["messages"][3]["content"] == "again"


def test_template_messages_give_arguments_as_objects():
    messages = validate(messages=LOOP)["messages"]
    rendered = template_messages(messages)
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'


@pytest.mark.django_db
def test_malformed_tools_over_http_are_400_in_the_error_shape(client):
    body = {"model": "gemma-3-270m", "messages": USER, "tools": [bad_tool(name="a b")]}
    r = client.post("/v1/chat/completions", body, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"
    assert "tools[0].function.name" in r.json()["error"]["message"]
    body = {"model": "gemma-3-270m", "messages": USER, "tools": [WEATHER]}
    body["tool_choice"] = {"type": "function", "function": {"name": "get_time"}}
    r = client.post("/v1/chat/completions", body, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"


# -- schema and grammar ------------------------------------------------------------------
def compiles(grammar: str) -> bool:
    # The engine's own call, without a vocabulary: the grammar is parsed and checked.
    sampler = llama_lib.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_lib.llama_sampler_free(sampler)
    return True


def test_no_schema_or_grammar_unless_the_choice_forces_a_call():
    for choice in ("auto", "none"):
        assert tool_call_schema(TOOLS, choice) is None
        assert forced_grammar(TOOLS, choice) is None
    assert tool_parser(TOOLS, "none") is None
    assert chosen_tools(TOOLS, "none") == []


def test_required_schema_accepts_a_call_to_any_tool_with_valid_arguments():
    schema = tool_call_schema(TOOLS, "required")
    jsonschema.validate(json.loads(PARIS), schema)
    jsonschema.validate({"name": "get_time", "arguments": {}}, schema)
    for bad in (
        {"name": "get_weather", "arguments": {}},
        {"name": "nope", "arguments": {}},
        {"name": "get_time"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_named_schema_accepts_only_that_tool():
    schema = tool_call_schema(TOOLS, {"type": "function", "function": {"name": "get_weather"}})
    assert schema["properties"]["name"] == {"const": "get_weather"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_time", "arguments": {}}, schema)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_grammar_compiles(choice, parallel):
    grammar = forced_grammar(TOOLS, choice, parallel=parallel)
    assert compiles(grammar)
    assert grammar.startswith("root ::= tool-call-block0")
    assert (f"{{0,{MAX_PARALLEL_CALLS - 1}}}" in grammar) is parallel
    assert '"<tool_call>\\n" tool-call-json0 "\\n</tool_call>"' in grammar
    assert "\nroot ::=" not in grammar  # the schema's own root was renamed


def test_forced_grammar_compiles_for_recursive_and_ref_schemas():
    tree = {
        "type": "object",
        "properties": {"node": {"$ref": "#/$defs/node"}},
        "required": ["node"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
            }
        },
    }
    itself = {"type": "object", "properties": {"next": {"$ref": "#"}, "v": {"type": "integer"}}}
    declared = [bad_tool(name="tree", parameters=tree), bad_tool(name="list", parameters=itself)]
    tools = tool_specs(validate(tools=declared)["tools"])
    for choice in ("required", {"type": "function", "function": {"name": "tree"}}):
        assert compiles(forced_grammar(tools, choice))
    schema = tool_call_schema(tools, "required")
    call = {"name": "tree", "arguments": {"node": {"label": "a", "children": [{"label": "b"}]}}}
    jsonschema.validate(call, schema)
    jsonschema.validate({"name": "list", "arguments": {"next": {"v": 1, "next": {}}}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "list", "arguments": {"next": {"v": "x"}}}, schema)
    text = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    assert calls_of(parse_tool_calls(text, tools)) == [("tree", call["arguments"])]


def test_the_grammar_converter_can_be_swapped():
    seen = []

    def to_gbnf(schema):
        seen.append(schema)
        return 'root ::= "{}"'

    grammar = forced_grammar(TOOLS, "required", parallel=False, to_gbnf=to_gbnf)
    assert seen == [tool_call_schema(TOOLS, "required")]
    assert 'tool-call-json0 ::= "{}"' in grammar
    assert compiles(grammar)


def test_auto_choice_gets_a_lazy_grammar_triggered_by_a_call():
    for choice in ("none", "required", {"type": "function", "function": {"name": "get_time"}}):
        assert auto_grammar(TOOLS, choice) is None
    assert auto_grammar([], "auto") is None
    lazy = auto_grammar(TOOLS, "auto")
    assert compiles(lazy.grammar)
    assert lazy.trigger_words == ("<tool_call>",)
    (pattern,) = lazy.trigger_patterns
    # `^...$`: llama.cpp matches it against the whole reply (it searches for any
    # other pattern); Python's re reads this pattern as std::regex (ECMAScript) does.
    assert pattern.startswith("^") and pattern.endswith("$")
    match = re.fullmatch(pattern, f"\n {PARIS}")
    assert match and match.group(1) == '{"name": "get_weather"'
    assert re.fullmatch(pattern, '{ "name" :"get_time"')
    for text in ('{"name": "get_stock"', f"Sure: {PARIS}", '{"city": "Paris"}'):
        assert not re.fullmatch(pattern, text)
    single = auto_grammar(TOOLS, "auto", parallel=False).grammar
    assert single.startswith("root ::= tool-call-block0 | tool-call-json0\n")


def test_grammar_rule_names_avoid_the_schemas_own():
    def to_gbnf(schema):
        rules = ["root ::= tool-call-block0 | tool-call-json0"]
        return "\n".join([*rules, 'tool-call-block0 ::= "a"', 'tool-call-json0 ::= "b"'])

    grammar = forced_grammar(TOOLS, "required", to_gbnf=to_gbnf)
    assert grammar.startswith("root ::= tool-call-block1 ")
    assert "tool-call-json1 ::= tool-call-block0 | tool-call-json0" in grammar
    assert compiles(grammar)


# -- parsing -----------------------------------------------------------------------------
def calls_of(reply) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in reply.calls]


PARIS_CALL = [("get_weather", {"city": "Paris"})]
BOTH = [("get_weather", {"city": "Paris"}), ("get_time", {})]

PARSE_CASES = [
    (f"<tool_call>\n{PARIS}\n</tool_call>", None, PARIS_CALL),
    (f"<tool_call>\n{PARIS}\n</tool_call>\n", None, PARIS_CALL),
    (f"<tool_call>\n{PARIS}\n", None, PARIS_CALL),  # the end of the reply closes it
    (
        f'<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{{"name": "get_time", '
        '"arguments": {}}\n</tool_call>',
        None,
        BOTH,
    ),
    (f"Let me check.\n<tool_call>\n{PARIS}\n</tool_call>", "Let me check.\n", PARIS_CALL),
    (f"<tool_call>{PARIS}</tool_call> Done.", " Done.", PARIS_CALL),
    (PARIS, None, PARIS_CALL),
    (f"  \n{PARIS}\n", None, PARIS_CALL),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, PARIS_CALL),
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', None, PARIS_CALL),
    (f'{PARIS}\n{{"name": "get_time"}}', None, BOTH),
    (f'{PARIS}, {{"name": "get_time", "arguments": {{}}}}', None, BOTH),
    (f'[{PARIS}, {{"name": "get_time", "arguments": {{}}}}]', None, BOTH),
    # JSON naming an unknown tool, or with arguments that fail validation, is text.
    ('{"name": "get_stock", "arguments": {"ticker": "X"}}', "=", []),
    ('{"name": "get_weather", "arguments": {"town": "Paris"}}', "=", []),
    ('{"name": "get_weather", "arguments": {"city": 7}}', "=", []),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}, "id": 1}', "=", []),
    (f'{PARIS}\n{{"name": "nope"}}', "=", []),
    ('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', "=", []),
    (f"<tool_call>\n{PARIS[:-1]}\n</tool_call>", "=", []),
    (f"<tool_call>\n{PARIS[:-1]}", "=", []),  # cut short
    # Prose that contains a call's JSON is text; so are JSON answers that are no call.
    (f"To get the weather I would call {PARIS}.", "=", []),
    (f"{PARIS} is what I would send.", "=", []),
    (f"```json\n{PARIS}\n```", "=", []),
    ('{"city": "Paris", "temperature": 21}', "=", []),
    ("[1, 2, 3]", "=", []),
    ("[]", "=", []),
    ("[Note] Paris is sunny.", "=", []),
    ('{"name": "get_weather", "arguments": {"city": "Paris"', "=", []),
    ("The capital of France is Paris.", "=", []),
    ("a < b and <tool", "=", []),
    ("", "", []),
    ("\n", "\n", []),
]


@pytest.mark.parametrize(("text", "content", "calls"), PARSE_CASES)
def test_parse_tool_calls(text, content, calls):
    reply = parse_tool_calls(text, TOOLS)
    assert reply.content == (text if content == "=" else content)
    assert calls_of(reply) == calls
    for call in reply.calls:
        assert call.id.startswith("call_") and len(call.id) > 12
        assert json.dumps(json.loads(call.arguments), separators=(",", ":")) == call.arguments


def test_only_the_chosen_tool_is_parsed_for_a_named_choice():
    tools = chosen_tools(TOOLS, {"type": "function", "function": {"name": "get_time"}})
    assert parse_tool_calls(PARIS, tools).calls == []


def test_calls_get_distinct_ids():
    reply = parse_tool_calls(f"{PARIS}\n{PARIS}", TOOLS)
    assert len({call.id for call in reply.calls}) == 2


def test_reply_message_and_finish_reason():
    reply = parse_tool_calls(f"<tool_call>\n{PARIS}\n</tool_call>", TOOLS)
    message = reply_message(reply)
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": reply.calls[0].id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert reply_finish_reason(reply, "stop") == "tool_calls"
    text = parse_tool_calls("Hello", TOOLS)
    assert reply_message(text) == {"role": "assistant", "content": "Hello"}
    assert reply_finish_reason(text, "length") == "length"


# -- streaming ---------------------------------------------------------------------------
def run_stream(chunks: list[str], tools=TOOLS) -> tuple[list[dict], ToolCallStream]:
    stream = ToolCallStream(tools)
    deltas = []
    for chunk in chunks:
        deltas.extend(stream.feed(chunk))
    deltas.extend(stream.finish())
    return deltas, stream


def assemble(deltas: list[dict]) -> tuple[str | None, list[tuple[str, dict]]]:
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for delta in deltas:
        for item in delta.get("tool_calls", ()):
            call = calls.setdefault(item["index"], {"name": "", "arguments": ""})
            call["name"] += item.get("function", {}).get("name", "")
            call["arguments"] += item["function"]["arguments"]
    ordered = [calls[i] for i in sorted(calls)]
    assert list(sorted(calls)) == list(range(len(calls)))
    return content, [(c["name"], json.loads(c["arguments"])) for c in ordered]


def chunkings(text: str, rng: random.Random):
    yield [text]
    yield list(text)
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    for _ in range(20 if len(text) > 2 else 0):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize(("text", "content", "calls"), PARSE_CASES)
def test_streaming_gives_the_whole_text_parse_for_every_chunking(text, content, calls):
    whole = parse_tool_calls(text, TOOLS)
    expected = (whole.content or "", calls_of(whole))
    rng = random.Random(text)
    for chunks in chunkings(text, rng):
        deltas, stream = run_stream(chunks)
        assert assemble(deltas) == expected, chunks
        result = stream.result()
        assert (result.content, calls_of(result)) == (whole.content, calls_of(whole))
        assert all(d.get("content") != "" for d in deltas)


def test_streamed_call_deltas_have_openai_shape():
    deltas, stream = run_stream(["\n", "<tool_call>", f"\n{PARIS}\n", "</tool_call>", "\n"])
    first, second = deltas[0]["tool_calls"][0], deltas[1]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": stream.calls[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert second == {"index": 0, "function": {"arguments": '{"city":"Paris"}'}}
    assert len(deltas) == 2  # whitespace around calls only is no content
    assert stream.result().content is None
    assert reply_finish_reason(stream, "stop") == "tool_calls"


def test_streaming_sends_prose_before_the_reply_ends():
    stream = ToolCallStream(TOOLS)
    assert stream.feed("The weather ") == [{"content": "The weather "}]
    assert stream.feed("is <tool") == [{"content": "is "}]
    assert stream.feed("kit>") == [{"content": "<toolkit>"}]
    assert stream.feed('{"a"') == [{"content": '{"a"'}]


def test_streaming_holds_what_could_be_a_bare_call():
    stream = ToolCallStream(TOOLS)
    assert stream.feed("\n") == []
    assert stream.feed('{"name": "get_weather", ') == []
    assert stream.feed('"arguments": {"city": "Paris"}}') == []
    text = '\n{"name": "get_weather", "arguments": {"city": "Paris"}} and'
    assert stream.feed(" and") == [{"content": text}]
    assert stream.calls == []


def test_streaming_gives_up_on_json_that_names_no_tool_at_once():
    stream = ToolCallStream(TOOLS)
    assert stream.feed('{"city": "Paris"}') == [{"content": '{"city": "Paris"}'}]
    stream = ToolCallStream(TOOLS)
    assert stream.feed("[Note") == [{"content": "[Note"}]


def test_openai_sdk_stream_helpers_assemble_the_calls():
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    time = '{"name": "get_time"}'
    text = f"Checking.\n<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{time}\n</tool_call>"
    deltas, stream = run_stream([text[i : i + 5] for i in range(0, len(text), 5)])
    state = ChatCompletionStreamState(input_tools=[WEATHER, TIME])
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunks = [{"role": "assistant", "content": ""}, *deltas]
    for delta in chunks:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        state.handle_chunk(ChatCompletionChunk.model_validate({**base, "choices": [choice]}))
    last = {"index": 0, "delta": {}, "finish_reason": reply_finish_reason(stream, "stop")}
    state.handle_chunk(ChatCompletionChunk.model_validate({**base, "choices": [last]}))
    completion = state.get_final_completion()
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking.\n\n"
    got = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert got == [(c.id, c.name, c.arguments) for c in stream.calls]
    assert [json.loads(a) for _, _, a in got] == [{"city": "Paris"}, {}]


# -- the real model ----------------------------------------------------------------------
@pytest.mark.django_db
def test_the_model_under_the_forced_grammar_makes_a_valid_call(gemma):
    from inference.engine import Finished, SamplingParams, TextDelta
    from inference.registry import registry

    engine = registry.engine_for(gemma)
    assert engine.wait_ready(60)
    # Any model obeys a grammar: the base Gemma here knows nothing of tools.
    city = {"type": "string", "maxLength": 12}
    weather = {
        **WEATHER["function"],
        "parameters": {"type": "object", "properties": {"city": city}, "required": ["city"]},
    }
    tools = tool_specs([{"type": "function", "function": weather}, TIME])
    # One call: the grammar checks Gemma's 262k-token vocabulary whenever a
    # sampled token breaks it, which is slow on a CPU; and a base model, once
    # allowed, repeats calls up to MAX_PARALLEL_CALLS.
    choice = "required"
    grammar = forced_grammar(tools, choice, parallel=False)
    tokens = engine.tokenize("Use a tool to find the weather in Paris.\n")
    params = SamplingParams(max_tokens=80, temperature=0.7, seed=7, grammar=grammar)
    stream = tool_parser(tools, choice)
    deltas, text, finished = [], "", None
    for event in engine.submit(tokens, params):
        if isinstance(event, TextDelta):
            text += event.text
            deltas.extend(stream.feed(event.text))
        elif isinstance(event, Finished):
            finished = event
    deltas.extend(stream.finish())
    assert finished.finish_reason == "stop", text
    reply = parse_tool_calls(text, chosen_tools(tools, choice))
    assert reply.content is None and reply.calls, text
    assert calls_of(stream.result()) == calls_of(reply)
    assert assemble(deltas) == ("", calls_of(reply))
    by_name = {tool.name: tool for tool in tools}
    for call in reply.calls:
        jsonschema.validate(json.loads(call.arguments), by_name[call.name].parameters)
