"""The engine's typed failures; callers map them to API errors."""

from __future__ import annotations


class EngineError(RuntimeError):
    pass


class EngineClosed(EngineError):
    """The engine was unloaded; the request should be retried (it will load again)."""


class ModelLoadError(EngineError):
    """A GGUF could not be loaded; the message names the file and the reason."""


class GrammarError(EngineError):
    """A grammar the engine will not run: over its bounds, or refused by llama.cpp's parser.

    The caller's fault, not the engine's: a service answers it with a 400 naming the
    parameter the grammar came from (`response_format`, `tools`).
    """
