"""The llama.cpp engine: one per loaded model, owning its context in one thread.

Callers never touch a llama.cpp context. They submit a job and get a handle;
the engine's thread runs a scheduler loop that decodes every active request in
one `llama_decode` per step, each request on its own llama.cpp sequence id
(its own KV cells), and pushes events into the handles. New requests join
between steps; their prompts are prefilled in chunks alongside the other
sequences' next tokens. Requests beyond `n_parallel` wait in a queue; a
free sequence goes to the owner (tenant) running the fewest. Embedding
requests run one batch per step, between decode steps. A finished
sequence's cells stay behind as a prefix cache entry (bounded, LRU) that a
later prompt with the same beginning copies instead of evaluating again.
Async code iterates a handle with `async for`; sync code with `for`.
Cancelling a handle makes the engine drop the request at its next step and
free its sequence.

Nothing outside this package knows how many sequences are decoded at once.

    spec.py          ModelSpec, SamplingParams, check_gguf
    errors.py        EngineError and its kinds
    events.py        TextDelta, Finished, EmbeddingResult, TokenLogprob
    handle.py        Handle: where a job's events arrive
    scheduler.py     LlamaEngine: the engine thread and its loop
    jobs.py          queued jobs and decoding sequences
    sampler.py       one sequence's sampler (and its grammar, eager or lazy)
    gbnf.py          bounds on a grammar before llama.cpp parses it
    prefix_cache.py  finished sequences' cells, reused by later prompts
    kv.py            KV cells by sequence id (clear, copy, count)
    embedder.py      the embedding context
    text.py          shared prefixes, stop strings
"""

from inference.engine.errors import EngineClosed, EngineError, GrammarError, ModelLoadError
from inference.engine.events import EmbeddingResult, Finished, TextDelta, TokenLogprob
from inference.engine.handle import Handle, wake_all
from inference.engine.scheduler import LlamaEngine
from inference.engine.spec import GGUF_MAGIC, ModelSpec, SamplingParams, check_gguf
from inference.engine.text import split_stop as _split_stop

__all__ = [
    "GGUF_MAGIC",
    "EmbeddingResult",
    "EngineClosed",
    "EngineError",
    "Finished",
    "GrammarError",
    "Handle",
    "LlamaEngine",
    "ModelLoadError",
    "ModelSpec",
    "SamplingParams",
    "TextDelta",
    "TokenLogprob",
    "_split_stop",
    "check_gguf",
    "wake_all",
]
