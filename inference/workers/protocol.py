"""The wire between gateway processes, the supervisor and the model workers.

Every frame is one msgpack value. Gateways talk to a worker over a DEALER ->
ROUTER pair (one per gateway process and worker generation):

    gateway -> worker   ["submit", job_id, prompt_tokens, params, owner, coming]
                        ["embed", job_id, inputs, owner]
                        ["cancel", job_id]
                        ["grammar", request_id, grammar]
    worker -> gateway   ["events", [[job_id, kind, *payload], ...]]   one frame per step
                        ["reply", request_id, error or None]

Control requests (load, unload, state) go REQ -> ROUTER to the supervisor,
which publishes each worker's view (state, generation, stats) on a PUB socket.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgpack

from inference.engine import (
    EmbeddingResult,
    EngineClosed,
    EngineError,
    Finished,
    GrammarError,
    ModelLoadError,
    ModelSpec,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)


class WorkerCrashed(EngineError):
    """The model's worker process died or hung with this request in flight."""


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- specs and sampling parameters ----------------------------------------------------
def spec_to_wire(spec: ModelSpec) -> dict:
    return {**dataclasses.asdict(spec), "path": str(spec.path)}


def spec_from_wire(data: dict) -> ModelSpec:
    return ModelSpec(**{**data, "path": Path(data["path"])})


def params_to_wire(params: SamplingParams) -> dict:
    out = dataclasses.asdict(params)
    out["stop"] = list(params.stop)
    out["logit_bias"] = dict(params.logit_bias) if params.logit_bias else None
    return out


def params_from_wire(data: dict) -> SamplingParams:
    tuples = ("stop", "trigger_words", "trigger_patterns")
    return SamplingParams(**{**data, **{key: tuple(data.get(key) or ()) for key in tuples}})


# -- events -----------------------------------------------------------------------------
ERRORS: dict[str, type[EngineError]] = {
    cls.__name__: cls for cls in (EngineError, EngineClosed, GrammarError, ModelLoadError)
}


def event_to_wire(event: object) -> list:
    if isinstance(event, TextDelta):
        logprobs = [[lp.token, lp.bytes, lp.logprob, lp.top] for lp in event.logprobs]
        return ["d", event.text, event.n_tokens, logprobs]
    if isinstance(event, Finished):
        return ["f", dataclasses.asdict(event)]
    if isinstance(event, EmbeddingResult):
        return ["e", event.vectors, event.prompt_tokens]
    if isinstance(event, BaseException):
        name = type(event).__name__
        return ["x", name if name in ERRORS else "EngineError", str(event)]
    raise TypeError(f"no wire form for {type(event).__name__}")


def event_from_wire(kind: str, *payload: Any) -> object:
    if kind == "d":
        text, n_tokens, logprobs = payload
        return TextDelta(
            text,
            [
                TokenLogprob(token, list(raw), logprob, [tuple(t) for t in top])
                for token, raw, logprob, top in logprobs
            ],
            n_tokens,
        )
    if kind == "f":
        return Finished(**payload[0])
    if kind == "e":
        return EmbeddingResult(payload[0], payload[1])
    if kind == "x":
        return ERRORS.get(payload[0], EngineError)(payload[1])
    raise ValueError(f"unknown event kind {kind!r}")


def is_terminal(event: object) -> bool:
    return isinstance(event, Finished | EmbeddingResult | BaseException)
