"""What arrives on a handle: text deltas (with log probabilities), the end, embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    n_tokens: int = 0  # tokens generated since the previous delta


@dataclass
class Finished:
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    # The stop string that ended the text (finish_reason "stop"); None for the
    # model's own end of generation token, a length or a cancel.
    stop_sequence: str | None = None


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
