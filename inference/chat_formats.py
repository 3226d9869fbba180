"""Hand-written chat prompt formats: messages -> prompt text, plus the strings that end a turn.

A model row's `chat_format` is `auto` (the GGUF's own `tokenizer.chat_template`,
see inference.chat_templates, or `chatml` when the GGUF has none) or one of
these, which overrides the template. The bundled Gemma 3 270M has no template
and uses `gemma`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    render: Callable[[list[dict]], str]
    stop: tuple[str, ...]


def _gemma(messages: list[dict]) -> str:
    # Gemma has no system role: the system text opens the first user turn.
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts: list[str] = []
    pending_system = system
    for message in messages:
        role = message["role"]
        if role == "system":
            continue
        content = message["content"]
        if role == "user" and pending_system:
            content = f"{pending_system}\n\n{content}"
            pending_system = ""
        turn = "model" if role == "assistant" else "user"
        parts.append(f"<start_of_turn>{turn}\n{content}<end_of_turn>\n")
    if pending_system:
        parts.append(f"<start_of_turn>user\n{pending_system}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def _chatml(messages: list[dict]) -> str:
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def _llama3(messages: list[dict]) -> str:
    body = "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
        for m in messages
    )
    return body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _raw(messages: list[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


CHAT_FORMATS: dict[str, ChatFormat] = {
    "gemma": ChatFormat(_gemma, ("<end_of_turn>",)),
    "chatml": ChatFormat(_chatml, ("<|im_end|>",)),
    "llama-3": ChatFormat(_llama3, ("<|eot_id|>",)),
    "raw": ChatFormat(_raw, ("\nuser:",)),
}


AUTO = "auto"
FALLBACK_FORMAT = "chatml"
"""What `auto` uses for a GGUF without a chat template (as llama-server does)."""

CHAT_FORMAT_CHOICES = [(AUTO, "auto (the GGUF's chat template)")] + [
    (name, name) for name in CHAT_FORMATS
]


def render_chat(format_name: str, messages: list[dict]) -> tuple[str, tuple[str, ...]]:
    chat_format = CHAT_FORMATS[format_name]
    return chat_format.render(messages), chat_format.stop
