"""JSON schemas (response_format, tools) into llama.cpp grammars, within bounds.

llama.cpp's schema converter writes `maxLength: 100000` as 100,000 nested groups
(which overflow the engine thread's stack when llama.cpp parses them) and
`minItems: 100000000` as a string of gigabytes. A schema is therefore bounded
before it is converted: its size, its depth, its counts and every repetition.
Conversion is CPU work: async callers use json_schema_grammar_async.
"""

from __future__ import annotations

import json
import re
from typing import TypeGuard

from asgiref.sync import sync_to_async

from inference.engine.errors import GrammarError
from inference.engine.gbnf import MAX_GRAMMAR_BYTES, check_grammar
from llmsite.errors import InvalidRequest

MAX_SCHEMA_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_PROPERTIES = 256  # per object
MAX_ENUM = 256  # values per enum
MAX_REPEAT = 256  # minLength, maxItems, a pattern's {m,n}...
MAX_PATTERN_DEPTH = 32  # nested groups in a pattern
MAX_INTEGER_BOUND = 2**63  # minimum, maximum: the converter spells out their digits

_REPEAT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_PATTERN_REPEAT = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def json_schema_grammar(schema: dict, *, param: str) -> str:
    """The GBNF grammar for `schema`, or InvalidRequest (400) naming `param`.

    Only local `$ref`s (`#/...`) are followed; nothing is fetched.
    """
    _check_schema(schema, param)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError as exc:
        raise _invalid(param, "the schema nests too deeply") from exc
    except Exception as exc:  # the converter reports a bad schema as any exception
        raise _invalid(param, f"the schema cannot be converted: {exc}") from exc
    try:
        check_grammar(grammar)
    except GrammarError as exc:
        raise _invalid(param, f"the schema's grammar is too large ({exc})") from exc
    return grammar


async def json_schema_grammar_async(schema: dict, *, param: str) -> str:
    """json_schema_grammar off the event loop (in a worker thread)."""
    return await sync_to_async(json_schema_grammar, thread_sensitive=False)(schema, param=param)


def _invalid(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid JSON schema in '{param}': {reason}.", param=param, code="invalid_value"
    )


def _check_schema(schema: object, param: str) -> None:
    if not isinstance(schema, dict):
        raise _invalid(param, "the schema must be an object")
    # Depth first, without recursion: json.dumps below recurses.
    stack: list[tuple[object, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise _invalid(param, f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        _check_keywords(node, param)
        stack.extend((value, depth + 1) for value in node.values())
    if len(json.dumps(schema).encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise _invalid(param, f"the schema is longer than {MAX_SCHEMA_BYTES} bytes")


def _check_keywords(node: dict, param: str) -> None:
    # Keywords are checked where they hold a keyword's kind of value: an object
    # may also be `properties`, whose keys are names (a property may be called
    # "maxLength"); the converter refuses a keyword with a value of the wrong kind.
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise _invalid(param, "only local $refs ('#/...') are allowed")
    for key in _REPEAT_KEYWORDS:
        value = node.get(key)
        if _is_number(value) and not 0 <= value <= MAX_REPEAT:
            raise _invalid(param, f"'{key}' must be between 0 and {MAX_REPEAT}")
    for key in _RANGE_KEYWORDS:
        value = node.get(key)
        if _is_number(value) and not -MAX_INTEGER_BOUND <= value <= MAX_INTEGER_BOUND:
            raise _invalid(param, f"'{key}' is out of range")
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM:
        raise _invalid(param, f"an enum has more than {MAX_ENUM} values")
    properties = node.get("properties")
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        raise _invalid(param, f"an object has more than {MAX_PROPERTIES} properties")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        _check_pattern(pattern, param)


def _check_pattern(pattern: str, param: str) -> None:
    for match in _PATTERN_REPEAT.finditer(pattern):
        if any(n and (len(n) > 6 or int(n) > MAX_REPEAT) for n in match.groups()):
            raise _invalid(param, f"a pattern repeats more than {MAX_REPEAT} times")
    depth = deepest = 0
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    if deepest > MAX_PATTERN_DEPTH:
        raise _invalid(param, f"a pattern nests groups deeper than {MAX_PATTERN_DEPTH}")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = ["MAX_GRAMMAR_BYTES", "json_schema_grammar", "json_schema_grammar_async"]
