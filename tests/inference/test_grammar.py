"""JSON schemas become grammars within bounds; a grammar llama.cpp refuses is a typed error."""

from __future__ import annotations

import pytest
from llama_cpp.llama_grammar import JSON_GBNF

from inference.engine import GrammarError, SamplingParams, TextDelta
from inference.engine.gbnf import check_grammar
from inference.engine.sampler import Sampler
from inference.grammar import json_schema_grammar, json_schema_grammar_async
from inference.registry import registry
from llmsite.errors import InvalidRequest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 5},
        # A property may be called like a keyword.
        "maxLength": {"type": "string", "pattern": "^[a-z]{1,8}$"},
    },
    "required": ["name", "age"],
}


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def refused(schema) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        json_schema_grammar(schema, param="response_format")
    err = caught.value
    assert err.status == 400 and err.param == "response_format" and err.code == "invalid_value"
    return err


def test_a_normal_schema_converts_to_a_grammar_that_passes_the_engines_bounds():
    grammar = json_schema_grammar(PERSON, param="response_format")
    assert "root ::=" in grammar
    check_grammar(grammar)


def test_a_huge_max_length_is_a_400_not_a_grammar_of_100000_nested_groups():
    assert "maxLength" in refused({"type": "string", "maxLength": 100000}).message


def test_a_huge_min_items_is_a_400_before_any_grammar_is_built():
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 100000000}
    assert "minItems" in refused(schema).message


def test_a_schema_a_thousand_levels_deep_is_a_400():
    refused(nested(1000))


def test_a_schema_within_the_depth_bound_converts():
    json_schema_grammar(nested(20), param="response_format")


def test_a_remote_ref_is_refused_by_a_check_of_our_own():
    # Not the converter's `assert` (gone under python -O), which would also
    # have fetched the schema once allowed to.
    for ref in ("https://example.com/schema.json", "http://example.com/s#/a", "file:///etc/passwd"):
        schema = {"type": "object", "properties": {"x": {"$ref": ref}}}
        assert "only local $refs" in refused(schema).message


def test_a_local_ref_is_followed():
    schema = {
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/place"}},
        "$defs": {"place": {"type": "string", "maxLength": 10}},
    }
    assert "home" in json_schema_grammar(schema, param="response_format")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a{1000}$"},
        {"type": "string", "pattern": "^(ab){2,100000}$"},
        {"type": "string", "pattern": "^" + "(" * 100 + "a" + ")" * 100 + "$"},
        {"enum": list(range(1000))},
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(300)}},
        {"type": "integer", "minimum": 10**100},
        {"type": "string", "minLength": -1},
        {"type": "string", "description": "x" * 40000},
        ["not", "an", "object"],
    ],
)
def test_schemas_over_a_bound_are_400s(schema):
    refused(schema)


def test_a_schema_the_converter_cannot_handle_is_a_400_too():
    refused({"type": "string", "pattern": "no anchors"})


def test_the_tools_parameter_is_named_when_it_is_the_source():
    with pytest.raises(InvalidRequest) as caught:
        json_schema_grammar({"type": "string", "maxLength": 10**6}, param="tools")
    assert caught.value.param == "tools"


async def test_the_async_wrapper_converts_off_the_event_loop():
    grammar = await json_schema_grammar_async(PERSON, param="response_format")
    assert grammar == json_schema_grammar(PERSON, param="response_format")
    with pytest.raises(InvalidRequest):
        await json_schema_grammar_async({"type": "string", "maxLength": 10**5}, param="x")


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= "a"{0,100000}',
        "root ::= " + "(" * 5000 + '"a"' + ")" * 5000,
        'root ::= "a" ' * 30000,
    ],
)
def test_the_engine_bounds_a_raw_grammar_before_llama_cpp_parses_it(grammar):
    with pytest.raises(GrammarError):
        check_grammar(grammar)


def test_literals_and_classes_are_not_read_as_repetition():
    check_grammar('root ::= "{100000}" [{}]{3} # {999999}\n')
    check_grammar(JSON_GBNF)


# -- against the real model ------------------------------------------------------------
@pytest.fixture
def engine(gemma):
    engine = registry.engine_for(gemma)
    assert engine.wait_ready(60)
    return engine


def test_a_grammar_llama_cpp_refuses_is_a_grammar_error_at_submit(engine):
    tokens = engine.tokenize("Hi")
    for grammar in ("root ::= undefined-rule", "root ::= (", "not a grammar"):
        with pytest.raises(GrammarError):
            engine.submit(tokens, SamplingParams(max_tokens=2, grammar=grammar))
    with pytest.raises(GrammarError):
        engine.submit(tokens, SamplingParams(max_tokens=2, grammar='root ::= "a"{0,100000}'))
    # The engine is unharmed and still runs a grammar it accepts.
    events = list(engine.submit(tokens, SamplingParams(max_tokens=3, grammar='root ::= "ok"')))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "ok"


def test_a_refused_grammar_that_reaches_the_engine_thread_ends_its_handle_typed(
    engine, monkeypatch
):
    # Submitted before the model was loaded, a grammar is parsed first in the
    # engine thread: its refusal arrives on the handle, and the engine goes on.
    monkeypatch.setattr(engine, "check_grammar", lambda grammar: None)
    tokens = engine.tokenize("Hi")
    for grammar in ("root ::= undefined-rule", 'root ::= "a"{0,100000}'):
        handle = engine.submit(tokens, SamplingParams(max_tokens=2, grammar=grammar))
        with pytest.raises(GrammarError):
            list(handle)
    assert engine.stats()["in_flight"] == 0
    assert list(engine.submit(tokens, SamplingParams(max_tokens=1)))


def test_the_sampler_refuses_an_unbounded_grammar_without_calling_llama_cpp(engine):
    params = SamplingParams(max_tokens=1, grammar="root ::= " + "(" * 100000 + '"a"' + ")" * 100000)
    with pytest.raises(GrammarError):
        Sampler(params, vocab=None, n_vocab=engine.n_vocab, n_ctx=engine.spec.n_ctx)
