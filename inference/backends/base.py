"""The backend interface: what the request service asks of a model, local or remote.

A backend turns a validated request into a `Generation` (prompt counted, cost
known, nothing computed yet), whose events are typed: text deltas, a finish
per choice, and the upstream's exact usage where it reports one. The service
reserves quota between `prepare` and `start`, and renders the events in the
client API's shape; it never asks which kind of backend it holds. Tool calls
arrive as ToolCallDelta events, already parsed: from the model's text by the
local backend, from the upstream's `tool_calls` by a remote one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inference.models import LLMModel


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log-probability, with its top alternatives as
    (token, bytes, logprob). The local engine's own entries have the same fields."""

    token: str
    bytes: list[int] | None
    logprob: float
    top: list[tuple[str, list[int] | None, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TextDelta:
    index: int  # the choice
    text: str
    n_tokens: int = 0  # tokens generated since the previous delta of this choice
    logprobs: Sequence[Any] = ()  # TokenLogprob-shaped entries


@dataclass(frozen=True)
class Finish:
    index: int
    reason: str  # "stop", "length", or what a remote backend said
    completion_tokens: int | None = None  # the backend's own count, when it keeps one
    # The request's own stop string that ended the choice (reason "stop"); None
    # for the model's natural end, and from a backend that cannot tell.
    stop_sequence: str | None = None


@dataclass(frozen=True)
class Usage:
    """Exact counts reported by the backend (a remote one's `usage`)."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call of a choice, in OpenAI's streamed shape.

    The first piece of a call carries its `id` and `name` (and usually no
    arguments); later pieces carry only more of `arguments` (JSON text). A
    backend that has whole calls sends one piece per call, or two.
    """

    index: int  # the choice
    call_index: int  # the call, within the choice
    id: str | None = None
    name: str | None = None
    arguments: str = ""


Event = TextDelta | ToolCallDelta | Finish | Usage


@dataclass(frozen=True)
class GenerateRequest:
    kind: str  # "completions" or "chat/completions"
    data: dict  # the validated body
    owner: str | None = None  # the tenant, for its fair share of a local engine


class Generation(Protocol):
    """One prepared generation. `prompt_tokens` is exact (local) or an upper
    bound (remote, until a Usage event); `reserve_tokens` is the most completion
    tokens it may produce, for the quota reservation."""

    prompt_tokens: int
    reserve_tokens: int
    # The prompt text to prefix each choice with when the request asks for
    # `echo`; None when the backend's own text already carries it.
    prompt_texts: list[str] | None
    n: int  # choices per prompt

    async def start(self, timeout: float | None) -> None:
        """Submit, and wait (at most `timeout`) for the first event: a backend
        that fails or stalls fails here, before anything was sent to the client."""

    def events(self) -> AsyncIterator[Event]:
        """The events, choice by choice; closing it stops the generation."""

    async def close(self) -> None:
        """Stop the generation (idempotent); what was computed stays counted."""


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class EmbeddingJob(Protocol):
    """Prepared embeddings: inputs validated, `prompt_tokens` exact (local) or
    an upper bound (remote) for the reservation."""

    prompt_tokens: int

    async def run(self) -> Embeddings: ...


class Backend(Protocol):
    model: LLMModel

    async def prepare(self, request: GenerateRequest) -> Generation: ...

    async def embed(self, data: dict, *, owner: str | None = None) -> EmbeddingJob: ...

    async def tokenize(self, text: str) -> list[int]: ...

    async def tokenizer(self) -> Any:
        """The model's own tokenizer (a loaded engine: tokenize, detokenize, its
        chat template); a backend without one here raises a 400 naming `model`."""
        ...
