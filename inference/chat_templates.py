"""Chat prompts: messages (and tools) -> prompt tokens, through the GGUF's own chat template.

A GGUF carrying `tokenizer.chat_template` is rendered with it in jinja2's
ImmutableSandboxedEnvironment, the way llama-cpp-python's Jinja2ChatFormatter,
llama-server and vLLM (transformers) do: trim_blocks, lstrip_blocks,
`raise_exception`, `strftime_now`, transformers' `tojson`, with `messages`,
`tools`, `add_generation_prompt`, `bos_token` and `eos_token`. A model row whose
`chat_format` names a hand-written format (inference.chat_formats) overrides
the template; `auto` on a GGUF without one uses chatml.

User text never becomes control tokens. Every string a client sent (message
content, tool-call names and arguments, tool descriptions...) is rendered as a
unique placeholder; the render is split there, template text is tokenized with
special=True and client text with special=False. The split is checked against a
render of the real strings (client text may appear as is, stripped or
JSON-escaped, as templates print it); when a template transforms client text in
some other way, the real render is tokenized whole, and only if no client string
holds control-token text, else the request is a 400.

The request path calls `chat_prompt(engine, model, messages, tools=...)`.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inference.chat_formats import AUTO, CHAT_FORMATS, FALLBACK_FORMAT, render_chat
from llmsite.errors import APIError, InvalidRequest

logger = logging.getLogger("llmsite.chat_templates")


class TemplateError(APIError):
    """The model's chat template failed on a well-formed request (the template's fault)."""

    status = 500
    type = "server_error"
    code = "chat_template_error"


@dataclass(frozen=True)
class ChatPrompt:
    tokens: list[int]
    stop: tuple[str, ...]  # stop strings the format adds (the template's turn end is an EOG token)
    text: str  # the prompt as rendered, client text included
    template: bool  # rendered by the GGUF's template (else a hand-written format)


# -- GGUF metadata ----------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFChatInfo:
    chat_template: str | None
    bos_token: str
    eos_token: str


_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_WANTED = {
    "tokenizer.chat_template",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
}


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    return f.read(n).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int, keep: bool = True):
    if vtype == _STRING:
        if keep:
            return _read_str(f)
        f.seek(_read(f, "<Q"), 1)
        return None
    if vtype == _ARRAY:
        item_type = _read(f, "<I")
        count = _read(f, "<Q")
        if item_type in _GGUF_SCALARS:
            f.seek(struct.calcsize(_GGUF_SCALARS[item_type]) * count, 1)
            return None
        return [_read_value(f, item_type, keep) for _ in range(count)]
    return _read(f, _GGUF_SCALARS[vtype])


@lru_cache(maxsize=32)
def _gguf_chat_info(path: Path, _mtime_ns: int) -> GGUFChatInfo:
    """The chat template and BOS/EOS token texts from a GGUF's header."""
    found: dict[str, Any] = {}
    tokens: list[str] | None = None
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = _read(f, "<I")
        count_fmt = "<I" if version == 1 else "<Q"
        _read(f, count_fmt)  # tensors
        n_kv = _read(f, count_fmt)
        for _ in range(n_kv):
            key = _read_str(f)
            vtype = _read(f, "<I")
            if key == "tokenizer.ggml.tokens":
                tokens = _read_value(f, vtype)
            else:
                value = _read_value(f, vtype, keep=key in _WANTED)
                if key in _WANTED:
                    found[key] = value

    def text(key: str) -> str:
        token_id = found.get(key)
        if tokens is None or token_id is None or not 0 <= token_id < len(tokens):
            return ""
        return tokens[token_id]

    template = found.get("tokenizer.chat_template")
    return GGUFChatInfo(
        chat_template=template if isinstance(template, str) and template.strip() else None,
        bos_token=text("tokenizer.ggml.bos_token_id"),
        eos_token=text("tokenizer.ggml.eos_token_id"),
    )


def gguf_chat_info(path: Path) -> GGUFChatInfo:
    """Read once per file (and modification time)."""
    path = Path(path)
    return _gguf_chat_info(path, path.stat().st_mtime_ns)


# -- the Jinja environment --------------------------------------------------------------
class _TemplateRaised(jinja2.exceptions.TemplateError):
    """The template called raise_exception(): it refuses this conversation."""


def _raise_exception(message: str):
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # transformers' tojson, which chat templates are written against: no HTML
    # escaping, non-ASCII kept (jinja2's own escapes <, >, & and ').
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_env_lock = threading.Lock()


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template, once per distinct template text."""
    with _env_lock:
        return _environment().from_string(source)


def render_template(
    source: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render a chat template as llama-cpp-python / vLLM do; TemplateError on failure."""
    try:
        template = compile_template(source)
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(f"The model's chat template does not compile: {exc}") from exc
    try:
        return template.render(
            messages=messages,
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except _TemplateRaised as exc:
        # The template refuses this conversation (e.g. roles out of order): the
        # client's to fix.
        raise InvalidRequest(
            f"The model's chat template refused these messages: {exc}",
            param="messages",
            code="invalid_messages",
        ) from exc
    except Exception as exc:
        raise TemplateError(f"The model's chat template failed to render: {exc}") from exc


# -- messages for templates -------------------------------------------------------------
def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates expect them: tool-call arguments as objects.

    OpenAI sends `function.arguments` as a JSON string; templates (Qwen's,
    Hermes', Llama's) print them with `tojson`, expecting an object, as vLLM
    and llama-server pass them.
    """
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                call = dict(call)
                function = dict(call.get("function") or {})
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    try:
                        parsed = json.loads(arguments)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict):
                        function["arguments"] = parsed
                call["function"] = function
                calls.append(call)
            message["tool_calls"] = calls
        out.append(message)
    return out


# Keys whose values templates compare against fixed words: never placeholders.
_STRUCTURAL = {"role", "type"}
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


def _shadow(value, strings: list[str], key: str | None = None):
    """`value` with every client string replaced by a placeholder (collected in `strings`)."""
    if isinstance(value, str):
        if not value or key in _STRUCTURAL:
            return value
        strings.append(value)
        return f"{_OPEN}{len(strings) - 1}{_CLOSE}"
    if isinstance(value, dict):
        return {k: _shadow(v, strings, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shadow(v, strings) for v in value]
    return value


def _keys(value, out: list[str]) -> list[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))
            _keys(v, out)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out)
    return out


def _variants(text: str) -> list[str]:
    """How a template may print a client string: as is, trimmed, or inside JSON."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    out = [text, text.strip(), escaped, json.dumps(text)[1:-1], text.rstrip(), text.lstrip()]
    return list(dict.fromkeys(out))


def _align(real: str, pieces: list[str], strings: list[str]) -> list[tuple[str, bool]] | None:
    """The real render as (text, is_client_text) runs, or None if the split does not fit it.

    `pieces` alternates template text and placeholder indices (as strings).
    """
    runs: list[tuple[str, bool]] = []
    pos = 0
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if not real.startswith(piece, pos):
                return None
            if piece:
                runs.append((piece, False))
            pos += len(piece)
            continue
        follow = pieces[i + 1] if i + 1 < len(pieces) else ""
        for variant in _variants(strings[int(piece)]):
            end = pos + len(variant)
            if real.startswith(variant, pos) and real.startswith(follow, end):
                if variant:
                    runs.append((variant, True))
                pos = end
                break
        else:
            return None
    return runs if pos == len(real) else None


# -- the prompt -------------------------------------------------------------------------
def chat_template_for(engine) -> GGUFChatInfo:
    """The GGUF's template and special tokens, for a loaded (or loading) engine."""
    return gguf_chat_info(engine.spec.path)


def uses_template(engine, model) -> bool:
    return model.chat_format == AUTO and chat_template_for(engine).chat_template is not None


def supports_tools(engine, model) -> bool:
    """Whether the model's prompt format can show tools: a template that reads `tools`."""
    if not uses_template(engine, model):
        return False
    return "tools" in (chat_template_for(engine).chat_template or "")


def chat_prompt(
    engine,
    model,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
) -> ChatPrompt:
    """The prompt tokens for a chat on `model` (an LLMModel row served by `engine`).

    `messages` are OpenAI chat messages as validated (content a string or None;
    assistant `tool_calls` with `function.arguments` a JSON string; role `tool`
    with `tool_call_id`). `tools` are OpenAI tool definitions. Raises
    InvalidRequest (400) or TemplateError (500), both rendered in the error shape.
    Blocking (tokenizes): call it off the event loop.
    """
    if uses_template(engine, model):
        info = chat_template_for(engine)
        return _template_prompt(engine, info, messages, tools, add_generation_prompt)
    name = FALLBACK_FORMAT if model.chat_format == AUTO else model.chat_format
    return format_prompt(engine, name, messages)


def _template_prompt(
    engine, info: GGUFChatInfo, messages, tools, add_generation_prompt: bool
) -> ChatPrompt:
    source = info.chat_template or ""
    real_messages = template_messages(messages)

    def render(messages: list[dict], tools: list[dict] | None) -> str:
        return render_template(
            source,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
        )

    real = render(real_messages, tools)
    strings: list[str] = []
    shadow_messages = _shadow(real_messages, strings)
    shadow_tools = _shadow(tools, strings) if tools else None
    try:
        shadow = render(shadow_messages, shadow_tools)
        runs = _align(real, _MARK.split(shadow), strings)
    except APIError:
        runs = None
    # Dict keys (tool parameter names, argument names) are printed as template text.
    unmarked = set(_keys(real_messages, []) + (_keys(tools, []) if tools else []))
    if any(_has_control_text(engine, key) for key in unmarked):
        raise InvalidRequest(
            "A tool or argument name contains a control token of this model.",
            param="tools",
            code="invalid_value",
        )
    # The template may print BOS itself; llama.cpp adds it only when the GGUF asks.
    add_bos = not (info.bos_token and real.startswith(info.bos_token))
    if runs is None:
        logger.info("chat template transforms client text; tokenizing its render whole")
        offending = next((s for s in strings if _has_control_text(engine, s)), None)
        if offending is not None:
            raise InvalidRequest(
                "A message contains text that is a control token of this model, and its chat "
                "template cannot keep it as plain text.",
                param="messages",
                code="invalid_value",
            )
        whole = engine.tokenize(real, add_bos=add_bos, special=True)
        return ChatPrompt(tokens=whole, stop=(), text=real, template=True)
    tokens: list[int] = []
    for text, is_client in runs:
        tokens += engine.tokenize(text, add_bos=add_bos and not tokens, special=not is_client)
    return ChatPrompt(tokens=tokens, stop=(), text=real, template=True)


def _has_control_text(engine, text: str) -> bool:
    if not text:
        return False
    return engine.tokenize(text, add_bos=False, special=True) != engine.tokenize(
        text, add_bos=False, special=False
    )


def format_prompt(engine, name: str, messages: list[dict]) -> ChatPrompt:
    """A hand-written format: placeholders for content, as before templates."""
    flat = [{**m, "content": _text_of(m)} for m in messages]
    shadow = [{**m, "content": f"\x00{i}\x00"} for i, m in enumerate(flat)]
    template, stop = render_chat(name, shadow)
    tokens: list[int] = []
    for position, piece in enumerate(_FORMAT_MARK.split(template)):
        if not piece:
            continue
        is_content = position % 2 == 1
        text = flat[int(piece)]["content"] if is_content else piece
        if text:
            tokens += engine.tokenize(text, add_bos=not tokens, special=not is_content)
    real, _ = render_chat(name, flat)
    return ChatPrompt(tokens=tokens, stop=stop, text=real, template=False)


_FORMAT_MARK = re.compile("\x00(\\d+)\x00")


def _text_of(message: dict) -> str:
    """Hand-written formats print text only: a tool call or result is shown as JSON text."""
    content = message.get("content") or ""
    if message.get("tool_calls"):
        calls = [
            {"name": c.get("function", {}).get("name"), "arguments": c["function"].get("arguments")}
            for c in message["tool_calls"]
        ]
        content = (content + "\n" if content else "") + json.dumps(calls, ensure_ascii=False)
    return content


__all__ = [
    "CHAT_FORMATS",
    "ChatPrompt",
    "TemplateError",
    "chat_prompt",
    "compile_template",
    "format_prompt",
    "gguf_chat_info",
    "render_template",
    "supports_tools",
    "template_messages",
    "uses_template",
]
