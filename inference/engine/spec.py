"""What a caller hands the engine: the model to load and how to sample."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inference.engine.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    path: Path
    n_ctx: int = 2048
    n_threads: int = 1
    n_batch: int = 512
    embeddings: bool = True
    n_parallel: int = 8
    # Waking from idle, the engine holds its first prompts up to this long while
    # their submitters say more are on their way, so that a burst is prefilled
    # in one batch (see LlamaEngine._gather). 0: never.
    admission_window_ms: float = 20.0
    # Added to the nice value of the engine thread and of the compute threads it
    # starts (why: LlamaEngine._run).
    nice: int = 0


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None: no logprobs. k >= 0: the chosen token's logprob plus the top k alternatives.
    logprobs: int | None = None
    grammar: str | None = None
    # With either set, `grammar` is lazy (llama.cpp's lazy grammar): sampling is
    # free until the reply emits a trigger word (anywhere) or matches a trigger
    # pattern (llama.cpp's semantics: `^...$` must match the whole reply so far,
    # any other pattern is searched for); the grammar then holds the reply from
    # the trigger (a pattern's first group) on. llama.cpp compiles the patterns
    # with std::regex, which aborts the process on one it cannot parse: they
    # come from this codebase (inference.tools), never from a client.
    trigger_words: tuple[str, ...] = ()
    trigger_patterns: tuple[str, ...] = ()
    logit_bias: Mapping[int, float] | None = None  # token id -> added to its logit


def check_gguf(path: Path) -> None:
    """Fail with a message naming the path unless it is a readable GGUF file."""
    if not path.exists():
        raise ModelLoadError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"GGUF path is not a file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"GGUF file cannot be read: {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"Not a GGUF file (bad magic {magic!r}): {path}")
