"""What the scheduler holds: queued jobs and the sequences being decoded."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field

import numpy as np

from inference.engine.events import TokenLogprob
from inference.engine.handle import Handle
from inference.engine.sampler import Sampler
from inference.engine.spec import SamplingParams


@dataclass
class GenerateJob:
    prompt_tokens: list[int]
    params: SamplingParams
    handle: Handle
    owner: str | None = None  # the tenant, for its share of the queue
    submitted_at: float = field(default_factory=time.monotonic)
    # The submitter's hint: how many more requests for this model it has on
    # their way (past routing, not yet submitted) as this one is submitted, and
    # who it is (a gateway process), so that a later hint replaces an earlier.
    coming: int = 0
    source: object = None


@dataclass(eq=False)
class EmbedJob:
    inputs: list[list[int]]
    handle: Handle
    owner: str | None = None
    # Filled batch by batch, between decode steps: inputs[:done] are embedded.
    vectors: list[list[float]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.vectors)


@dataclass(eq=False)
class Seq:
    """A request being decoded: one llama.cpp sequence id, its own KV cells and sampler."""

    job: GenerateJob
    seq_id: int
    sampler: Sampler
    tokens: list[int]  # the prompt, then every sampled token
    n_past: int = 0  # how many of `tokens` are in the KV cells
    row: int = -1  # this step's logits row in the batch, or -1
    leader: Seq | None = None  # n>1: a sequence whose prompt KV this one will copy
    followers: list[Seq] = field(default_factory=list)
    # The logits after the prompt's last token: an exact repeat of this prompt
    # samples its first token from them instead of evaluating anything.
    prompt_logits: np.ndarray | None = None
    completion_tokens: int = 0
    unsent: int = 0  # tokens generated but not yet part of an emitted delta
    held: str = ""  # text withheld because it may be the start of a stop string
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def prompt_len(self) -> int:
        return len(self.job.prompt_tokens)
