"""Tool calling: the schemas and grammars that force a call, and the parsers that find one.

The request's `tools` arrive validated and normalized by the chat serializer
(OpenAI's `{"type": "function", "function": {...}}` dicts). This module turns
them into:

- a JSON Schema per call, `{"name": <const>, "arguments": <parameters>}`, and
  a GBNF grammar of Hermes `<tool_call>` blocks built on it, for
  `tool_choice` `"required"` or a named function (`forced_grammar`);
- for `"auto"`, a lazy grammar (`auto_grammar`) that holds a call to its
  schema once the reply starts one;
- a parser of the model's text into content and `tool_calls`, whole
  (`parse_tool_calls`) or streamed (`ToolCallStream`), for `"auto"` and the
  forced choices alike. `"none"` parses nothing.

The request path starts from `tool_request(validated_data)`.

What counts as a call (Qwen 2.5's Hermes format, as its chat template teaches):

- a `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` block;
- a reply made only of such JSON objects (whitespace or commas between them),
  or of one JSON list of them, without the tags: small Qwen models often
  drop them. Text that merely contains such JSON is content.

Either way the object must name a declared tool and its arguments (under
`arguments` or `parameters`) must validate against that tool's `parameters`;
anything else stays text. The streamed parser holds back only what could
still become a call, and its content and calls always equal the whole-text
parse: `parse_tool_calls` is the streamed parser fed the whole text at once.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llmsite.errors import InvalidRequest

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
# With parallel_tool_calls a forced reply holds at most this many calls: a
# grammar without a bound lets a looping model call until max_tokens.
MAX_PARALLEL_CALLS = 8
_ID_ALPHABET = string.ascii_letters + string.digits

EMPTY_PARAMETERS: dict = {"type": "object", "properties": {}}


# -- the request's tools -----------------------------------------------------------------
@dataclass(frozen=True)
class ToolSpec:
    """One declared function: its name, description and `parameters` JSON Schema."""

    name: str
    description: str
    parameters: dict
    strict: bool = False
    validator: Any = field(default=None, compare=False, repr=False)

    def accepts(self, arguments: Any) -> bool:
        if not isinstance(arguments, dict):
            return False
        try:
            return self.validator.is_valid(arguments)
        except Exception:  # a schema the validator cannot apply: the text is no call
            return False


def tool_spec(tool: dict) -> ToolSpec:
    """A ToolSpec from one serializer-normalized `tools` entry."""
    from jsonschema.validators import validator_for

    function = tool["function"]
    parameters = function.get("parameters") or EMPTY_PARAMETERS
    cls = validator_for(parameters)
    return ToolSpec(
        name=function["name"],
        description=function.get("description") or "",
        parameters=parameters,
        strict=bool(function.get("strict")),
        validator=cls(parameters),
    )


def tool_specs(tools: Iterable[dict] | None) -> list[ToolSpec]:
    return [tool_spec(tool) for tool in tools or ()]


def chosen_tools(tools: list[ToolSpec], tool_choice: str | dict) -> list[ToolSpec]:
    """The tools a reply may call: none for `"none"`, the named one, or all of them."""
    if tool_choice == "none":
        return []
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        return [tool for tool in tools if tool.name == name]
    return list(tools)


def is_forced(tool_choice: str | dict) -> bool:
    """`"required"` or a named function: decoding is constrained to calls."""
    return tool_choice == "required" or isinstance(tool_choice, dict)


# -- forcing a call: schema and grammar --------------------------------------------------
def call_schema(tool: ToolSpec) -> dict:
    """The JSON of one Hermes call to `tool`: `{"name": <its name>, "arguments": {...}}`."""
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_schema(tools: list[ToolSpec], tool_choice: str | dict) -> dict | None:
    """The JSON Schema one forced call's JSON must match; None unless the choice forces one.

    `{"name": const, "arguments": <parameters>}`, under `anyOf` when several
    tools may be called. Each tool's `parameters` also sits in the top-level
    `$defs` (as `tool-<i>`) and its local `$ref`s are rewritten to point
    there, so that refs written against the parameters' own root (`#`,
    `#/$defs/...`, as pydantic emits them) still resolve once embedded.
    """
    if not is_forced(tool_choice):
        return None
    return _calls_schema(chosen_tools(tools, tool_choice))


def _calls_schema(allowed: list[ToolSpec]) -> dict | None:
    if not allowed:
        return None
    defs: dict = {}
    calls = []
    for index, tool in enumerate(allowed):
        base = f"#/$defs/tool-{index}"
        parameters = _rebase_refs(tool.parameters, base)
        if _has_refs(tool.parameters):
            defs[f"tool-{index}"] = parameters
        calls.append(call_schema(ToolSpec(tool.name, tool.description, parameters)))
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def _has_refs(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or any(_has_refs(value) for value in node.values())
    if isinstance(node, list):
        return any(_has_refs(value) for value in node)
    return False


def _rebase_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        out = {key: _rebase_refs(value, base) for key, value in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = base + ref[1:]
        return out
    if isinstance(node, list):
        return [_rebase_refs(value, base) for value in node]
    return node


def schema_gbnf(schema: dict) -> str:
    """A JSON Schema as GBNF whose start rule is `root`; a bad schema is a 400 on `tools`.

    The one place schemas become grammars here, so that a bounded converter can
    replace llama-cpp-python's.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise InvalidRequest(
            f"A tool's `parameters` schema cannot be used to constrain decoding: {exc}",
            param="tools",
            code="invalid_value",
        ) from exc


def forced_grammar(
    tools: list[ToolSpec],
    tool_choice: str | dict,
    *,
    parallel: bool = True,
    to_gbnf: Callable[[dict], str] = schema_gbnf,
) -> str | None:
    """GBNF for a reply of `<tool_call>\\n{json}\\n</tool_call>` blocks; None unless forced.

    One block, or with `parallel` one to MAX_PARALLEL_CALLS blocks a newline
    apart. The converted call schema's `root` becomes the sub-rule
    `tool-call-json0` (or another free name).
    """
    schema = tool_call_schema(tools, tool_choice)
    if schema is None:
        return None
    return _blocks_grammar(schema, parallel=parallel, to_gbnf=to_gbnf, bare=False)


@dataclass(frozen=True)
class LazyGrammar:
    """A grammar that applies only once the reply starts a call (llama.cpp's lazy grammar).

    Until a trigger fires, sampling is free; from the trigger on, the reply
    is held to valid calls and nothing after them. `trigger_words` are
    literal texts (`<tool_call>` is one special token in Qwen's vocabulary:
    the engine passes it as a trigger token where it tokenizes to one, and
    as a pattern for its spelling in plain text). Each of `trigger_patterns`
    is written `^...$`: llama.cpp matches such a pattern against the whole
    reply so far (std::regex, ECMAScript) after every token, and searches
    anywhere for any other; the grammar is fed the text from its first group on.
    """

    grammar: str
    trigger_words: tuple[str, ...]
    trigger_patterns: tuple[str, ...]


def auto_grammar(
    tools: list[ToolSpec],
    tool_choice: str | dict,
    *,
    parallel: bool = True,
    to_gbnf: Callable[[dict], str] = schema_gbnf,
) -> LazyGrammar | None:
    """For `"auto"`: a lazy grammar that keeps a started call valid; None otherwise.

    Triggers: the `<tool_call>` tag anywhere, or a reply that opens with a
    bare `{"name": "<declared tool>"` (the form this module's parser accepts
    without tags). The grammar allows tagged blocks, or bare call objects a
    newline apart, MAX_PARALLEL_CALLS at most (one without `parallel`).
    """
    if tool_choice != "auto" or not tools:
        return None
    schema = _calls_schema(list(tools))
    if schema is None:
        return None
    grammar = _blocks_grammar(schema, parallel=parallel, to_gbnf=to_gbnf, bare=True)
    names = "|".join(tool.name for tool in tools)  # [a-zA-Z0-9_-]: nothing to escape
    bare = r'^[\s]*(\{[\s]*"name"[\s]*:[\s]*"(?:' + names + r')")[\s\S]*$'
    return LazyGrammar(grammar=grammar, trigger_words=(OPEN_TAG,), trigger_patterns=(bare,))


def _blocks_grammar(
    schema: dict, *, parallel: bool, to_gbnf: Callable[[dict], str], bare: bool
) -> str:
    json_rules = to_gbnf(schema)
    # llama.cpp rule names are letters, digits and dashes: ours get a suffix
    # that no rule of the converted schema uses.
    taken = set(_GBNF_RULE.findall(json_rules))
    suffix = 0
    while {f"tool-call-block{suffix}", f"tool-call-json{suffix}"} & taken:
        suffix += 1
    block_rule, json_rule = f"tool-call-block{suffix}", f"tool-call-json{suffix}"
    json_rules = _rename_rule(json_rules, "root", json_rule)
    block = f'"{_gbnf_literal(OPEN_TAG)}\\n" {json_rule} "\\n{_gbnf_literal(CLOSE_TAG)}"'
    more = f"{{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel and MAX_PARALLEL_CALLS > 1 else ""
    root = f'{block_rule} ("\\n" {block_rule}){more}' if more else block_rule
    if bare:
        bare_calls = f'{json_rule} ("\\n" {json_rule}){more}' if more else json_rule
        root = f"{root} | {bare_calls}"
    return f"root ::= {root}\n{block_rule} ::= {block}\n{json_rules}"


def _gbnf_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# A rule name where it stands as a whole identifier, outside "..." and [...].
_GBNF_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9_-]+|.', re.S)


_GBNF_RULE = re.compile(r"^([A-Za-z0-9-]+)\s*::=", re.M)


def _rename_rule(grammar: str, old: str, new: str) -> str:
    return "".join(new if token == old else token for token in _GBNF_TOKEN.findall(grammar))


# -- the reply: calls ----------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # compact JSON text of an object

    def payload(self) -> dict:
        """The OpenAI `tool_calls` item of a whole message."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into content (None when it is only calls) and tool calls."""

    content: str | None
    calls: list[ToolCall]


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _as_call(value: Any, tools: dict[str, ToolSpec]) -> ToolCall | None:
    """A ToolCall when `value` is a call object naming a declared tool with valid arguments."""
    if not isinstance(value, dict) or not set(value) <= {"name", "arguments", "parameters"}:
        return None
    if "arguments" in value and "parameters" in value:
        return None
    name = value.get("name")
    tool = tools.get(name) if isinstance(name, str) else None
    if tool is None:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not tool.accepts(arguments):
        return None
    text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    return ToolCall(id=new_call_id(), name=tool.name, arguments=text)


def _parse_call_json(text: str, tools: dict[str, ToolSpec]) -> ToolCall | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return _as_call(value, tools)


def parse_tool_calls(text: str, tools: list[ToolSpec]) -> ParsedReply:
    """Split a whole reply into content and the calls it makes to `tools`."""
    stream = ToolCallStream(tools)
    stream.feed(text)
    stream.finish()
    return stream.result()


# -- the reply, streamed -----------------------------------------------------------------
class _JsonPrefix:
    """Follows a reply that might be only JSON call objects, one character at a time.

    It says `dead` as soon as the text cannot be such a reply: a character
    outside a top-level object or list that is not whitespace or a comma, or
    a character no JSON text could have there. It is deliberately loose
    inside numbers and escapes (json.loads judges each finished value), so
    `dead` is never said of text that could still be calls.
    """

    def __init__(self) -> None:
        self.dead = False
        self.values: list[tuple[int, int]] = []  # [start, end) of each top-level value
        self._stack: list[str] = []  # "{" / "["
        self._state = "top"
        self._key = False  # the string being read is an object key
        self._literal = ""  # the rest of true/false/null still expected
        self._start = 0
        self._pos = 0

    @property
    def at_top(self) -> bool:
        return not self._stack

    def feed(self, text: str) -> None:
        for char in text:
            if self.dead:
                return
            self._step(char)
            self._pos += 1

    def _step(self, c: str) -> None:
        state = self._state
        if state == "string":
            if c == "\\":
                self._state = "escape"
            elif c == '"':
                self._state = "colon" if self._key else "after"
            elif c < " ":
                self.dead = True
            return
        if state == "escape":
            self._state = "string"
            return
        if state == "number":
            if c in "0123456789+-.eE":
                return
            self._state = "after"
            state = "after"
        if state == "literal":
            if c == self._literal[0]:
                self._literal = self._literal[1:]
                if not self._literal:
                    self._state = "after"
            else:
                self.dead = True
            return
        if c in " \t\r\n":
            return
        if state == "top":
            if c == ",":
                return
            if c in "{[":
                self._start = self._pos
                self._open(c)
            else:
                self.dead = True
        elif state in ("value", "value_or_end"):
            if c == "]" and state == "value_or_end":
                self._close()
            elif c in "{[":
                self._open(c)
            elif c == '"':
                self._key = False
                self._state = "string"
            elif c == "-" or c.isdigit():
                self._state = "number"
            elif c in "tfn":
                self._literal = {"t": "rue", "f": "alse", "n": "ull"}[c]
                self._state = "literal"
            else:
                self.dead = True
        elif state in ("key", "key_or_end"):
            if c == "}" and state == "key_or_end":
                self._close()
            elif c == '"':
                self._key = True
                self._state = "string"
            else:
                self.dead = True
        elif state == "colon":
            if c == ":":
                self._state = "value"
            else:
                self.dead = True
        elif state == "after":
            top = self._stack[-1]
            if c == ",":
                self._state = "key" if top == "{" else "value"
            elif (c == "}" and top == "{") or (c == "]" and top == "["):
                self._close()
            else:
                self.dead = True

    def _open(self, c: str) -> None:
        self._stack.append(c)
        self._state = "key_or_end" if c == "{" else "value_or_end"

    def _close(self) -> None:
        self._stack.pop()
        if self._stack:
            self._state = "after"
        else:
            self._state = "top"
            self.values.append((self._start, self._pos + 1))


class ToolCallStream:
    """Turns a reply's text deltas into OpenAI `delta` payloads: content pieces and calls.

    `feed(text)` and `finish()` each return a list of deltas, every one either
    `{"content": str}` or `{"tool_calls": [item]}`. A call comes as two
    deltas: `{"index", "id", "type": "function", "function": {"name",
    "arguments": ""}}`, then `{"index", "function": {"arguments": <all of
    them>}}`; a call is only sent once it is whole and valid. Text that could
    still turn out to be a call is held back until it is known not to be.
    """

    def __init__(self, tools: list[ToolSpec]) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._buffer = ""
        self._bare: _JsonPrefix | None = _JsonPrefix()  # None once bare calls are ruled out
        self._pos = 0  # the buffer before this is settled (sent as content or calls)
        self._held_ws = ""  # leading whitespace: content only if some real content follows
        self._seen_text = False
        self._content: list[str] = []
        self.calls: list[ToolCall] = []
        self._finished = False
        self._checked = 0  # finished bare values already found to be calls

    # public ----------------------------------------------------------------------------
    def feed(self, text: str) -> list[dict]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not text:
            return []
        self._buffer += text
        out: list[dict] = []
        if self._bare is not None:
            self._bare.feed(text)
            if not self._bare.dead and not self._bare_values_fail():
                return out
            self._bare = None
        self._scan(out, final=False)
        return out

    def finish(self) -> list[dict]:
        """Settle what was held back: the calls of a JSON-only reply, or content."""
        if self._finished:
            return []
        self._finished = True
        out: list[dict] = []
        if self._bare is not None:
            calls = self._bare_calls()
            self._bare = None
            if calls:
                for call in calls:
                    self._emit_call(out, call)
                self._pos = len(self._buffer)
                return out
        self._scan(out, final=True)
        if self._held_ws and not self.calls:
            self._emit_text(out, self._held_ws, force=True)
        self._held_ws = ""
        return out

    def result(self) -> ParsedReply:
        content = "".join(self._content)
        if self.calls and not content.strip():
            return ParsedReply(content=None, calls=list(self.calls))
        return ParsedReply(content=content, calls=list(self.calls))

    # bare JSON ------------------------------------------------------------------------
    def _bare_values_fail(self) -> bool:
        """Whether a finished top-level JSON value already fails to be calls."""
        bare = self._bare
        if bare is None:
            return False
        for start, end in bare.values[self._checked :]:
            if self._bare_value_calls(self._buffer[start:end]) is None:
                return True
        self._checked = len(bare.values)
        return False

    def _bare_value_calls(self, text: str) -> list[ToolCall] | None:
        try:
            value = json.loads(text)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        calls = [_as_call(item, self._tools) for item in items]
        found = [call for call in calls if call is not None]
        if not calls or len(found) != len(calls):
            return None
        return found

    def _bare_calls(self) -> list[ToolCall]:
        bare = self._bare
        if bare is None or bare.dead or not bare.at_top or not bare.values:
            return []
        calls: list[ToolCall] = []
        for start, end in bare.values:
            value_calls = self._bare_value_calls(self._buffer[start:end])
            if value_calls is None:
                return []
            calls.extend(value_calls)
        return calls

    # tagged blocks ----------------------------------------------------------------------
    def _scan(self, out: list[dict], *, final: bool) -> None:
        buffer = self._buffer
        while self._pos < len(buffer):
            start = buffer.find(OPEN_TAG, self._pos)
            if start < 0:
                end = len(buffer) if final else len(buffer) - _partial_suffix(buffer, OPEN_TAG)
                self._emit_text(out, buffer[self._pos : end])
                self._pos = end
                return
            self._emit_text(out, buffer[self._pos : start])
            self._pos = start
            inner_start = start + len(OPEN_TAG)
            close = buffer.find(CLOSE_TAG, inner_start)
            if close < 0:
                if not final:
                    return
                end = len(buffer)
                inner = buffer[inner_start:]
            else:
                end = close + len(CLOSE_TAG)
                inner = buffer[inner_start:close]
            call = _parse_call_json(inner, self._tools)
            if call is None:
                self._emit_text(out, buffer[start:end])
            else:
                self._emit_call(out, call)
            self._pos = end

    # output ---------------------------------------------------------------------------
    def _emit_text(self, out: list[dict], text: str, *, force: bool = False) -> None:
        if not text:
            return
        if not self._seen_text and not force:
            if not text.strip():
                self._held_ws += text
                return
            text, self._held_ws = self._held_ws + text, ""
            self._seen_text = True
        self._content.append(text)
        out.append({"content": text})

    def _emit_call(self, out: list[dict], call: ToolCall) -> None:
        index = len(self.calls)
        self.calls.append(call)
        out.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
        out.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


# -- one request ------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolRequest:
    """A chat request's tool fields, read once: what the three sides of the request need.

    - prompt: `template_tools` (the request's `tools`, or None) go to the chat
      template (inference.chat_templates.chat_prompt turns call arguments into objects);
    - sampling: `grammar()` for "required" or a named function, else
      `lazy_grammar()` for "auto" where the engine supports lazy grammars;
    - output: `parser()` per choice, fed every text delta, then `finish()`.
    """

    tools: list[ToolSpec]
    choice: str | dict
    parallel: bool
    template_tools: list[dict] | None

    @property
    def forced(self) -> bool:
        return bool(self.tools) and is_forced(self.choice)

    def grammar(self, *, to_gbnf: Callable[[dict], str] = schema_gbnf) -> str | None:
        return forced_grammar(self.tools, self.choice, parallel=self.parallel, to_gbnf=to_gbnf)

    def lazy_grammar(self, *, to_gbnf: Callable[[dict], str] = schema_gbnf) -> LazyGrammar | None:
        return auto_grammar(self.tools, self.choice, parallel=self.parallel, to_gbnf=to_gbnf)

    def parser(self) -> ToolCallStream | None:
        return tool_parser(self.tools, self.choice)


def tool_request(data: dict) -> ToolRequest:
    """The tool side of a validated chat request (`ChatCompletionRequestSerializer` data)."""
    raw = data.get("tools") or None
    tools = tool_specs(raw)
    choice = data.get("tool_choice") or ("auto" if tools else "none")
    parallel = data.get("parallel_tool_calls")
    return ToolRequest(
        tools=tools,
        choice=choice if tools else "none",
        parallel=True if parallel is None else bool(parallel),
        template_tools=raw,
    )


# -- the response ------------------------------------------------------------------------
def tool_parser(tools: list[ToolSpec], tool_choice: str | dict) -> ToolCallStream | None:
    """A fresh streamed parser for one choice; None when no call may be produced."""
    allowed = chosen_tools(tools, tool_choice)
    return ToolCallStream(allowed) if allowed else None


def reply_message(reply: ParsedReply) -> dict:
    """The non-streamed `message`: content (null when only calls) and `tool_calls`."""
    message: dict = {"role": "assistant", "content": reply.content}
    if reply.calls:
        message["tool_calls"] = [call.payload() for call in reply.calls]
    return message


def reply_finish_reason(reply: ParsedReply | ToolCallStream, finish_reason: str) -> str:
    """`"tool_calls"` when the reply made calls, else the engine's own reason."""
    return "tool_calls" if reply.calls else finish_reason
