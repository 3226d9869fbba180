"""The process-wide set of loaded engines, keyed by model id.

Loading runs in the engine's own thread, off the request path; callers wait
for it with a timeout. A model whose file is missing or corrupt fails alone:
the other engines keep serving.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path

from django.conf import settings

from inference.engine import LlamaEngine, ModelLoadError, ModelSpec
from inference.models import BUNDLED_PREFIX, LLMModel

logger = logging.getLogger("llmsite.registry")

_bundled_lock = threading.Lock()


def bundled_package(path: str) -> str:
    """The module name behind a `bundled:<package>` path."""
    return path[len(BUNDLED_PREFIX) :].strip().replace("-", "_")


def resolve_path(path: str) -> Path:
    """The GGUF file for a model row; `bundled:<package>` is assembled into the data dir."""
    if not path.startswith(BUNDLED_PREFIX):
        return Path(path).expanduser()
    package = bundled_package(path)
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(f"bundled model package {package!r} is not installed") from exc
    target = Path(settings.MODELS_DIR) / module.MODEL_NAME
    with _bundled_lock:
        try:
            # assemble() verifies the checksum of an existing file as well.
            return Path(module.assemble(target))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"bundled model {target} failed its checksum: {exc}") from exc


def spec_for(model: LLMModel) -> ModelSpec:
    return ModelSpec(
        model_id=model.model_id,
        path=resolve_path(model.path),
        n_ctx=model.n_ctx,
        n_threads=model.n_threads or settings.LLMSITE_N_THREADS,
        n_batch=min(model.n_batch, model.n_ctx),
        embeddings=model.embeddings,
        n_parallel=model.n_parallel,
    )


class Registry:
    def __init__(self) -> None:
        self._engines: dict[str, LlamaEngine] = {}
        self._lock = threading.Lock()

    def engine_for(self, model: LLMModel) -> LlamaEngine:
        """The engine for `model`, started (loading in the background) if needed.

        A row whose settings changed since its engine was started gets a new
        engine; the old one finishes its queued work and is closed.
        """
        with self._lock:
            engine = self._engines.get(model.model_id)
            if engine is not None and engine.load_error is None and _matches(engine.spec, model):
                return engine
        spec = spec_for(model)
        with self._lock:
            engine = self._engines.get(model.model_id)
            if engine is not None and engine.spec == spec and engine.load_error is None:
                return engine
            old = engine
            engine = LlamaEngine(spec)
            self._engines[model.model_id] = engine
        if old is not None:
            threading.Thread(target=old.close, daemon=True).start()
        return engine

    def ready_engine(self, model: LLMModel) -> LlamaEngine | None:
        """The loaded engine still matching `model`, or None. No I/O: safe on the event loop."""
        with self._lock:
            engine = self._engines.get(model.model_id)
        if engine is not None and engine.is_ready and _matches(engine.spec, model):
            return engine
        return None

    def get(self, model_id: str) -> LlamaEngine | None:
        """The model's engine in whatever state it is (loading, failed, ready), or None."""
        with self._lock:
            return self._engines.get(model_id)

    def get_loaded(self, model_id: str) -> LlamaEngine | None:
        with self._lock:
            engine = self._engines.get(model_id)
        return engine if engine is not None and engine.is_ready else None

    def unload(self, model_id: str) -> bool:
        with self._lock:
            engine = self._engines.pop(model_id, None)
        if engine is None:
            return False
        engine.close()
        return True

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return [mid for mid, engine in self._engines.items() if engine.is_ready]


def _matches(spec: ModelSpec, model: LLMModel) -> bool:
    """Whether a running engine still fits its row, without touching the file system."""
    # A bundled path resolves to the same assembled file every time.
    bundled = model.path.startswith(BUNDLED_PREFIX)
    return (
        (bundled or Path(model.path).expanduser() == spec.path)
        and spec.n_ctx == model.n_ctx
        and spec.n_batch == min(model.n_batch, model.n_ctx)
        and spec.n_threads == (model.n_threads or settings.LLMSITE_N_THREADS)
        and spec.embeddings == model.embeddings
        and spec.n_parallel == model.n_parallel
    )


registry = Registry()
