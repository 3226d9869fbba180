"""The backends a model is served by: one interface (`base`), two implementations."""

from __future__ import annotations

from inference.backends.base import (
    Backend,
    EmbeddingJob,
    Embeddings,
    Event,
    Finish,
    GenerateRequest,
    Generation,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from inference.models import LLMModel

__all__ = [
    "Backend",
    "EmbeddingJob",
    "Embeddings",
    "Event",
    "Finish",
    "GenerateRequest",
    "Generation",
    "TextDelta",
    "TokenLogprob",
    "ToolCallDelta",
    "Usage",
    "backend_for",
]


def backend_for(model: LLMModel) -> Backend:
    """The backend serving `model`: the one place that asks whether it is remote."""
    if model.is_remote:
        from inference.backends.remote import RemoteBackend

        return RemoteBackend(model)
    from inference.backends.local import LocalBackend

    return LocalBackend(model)
