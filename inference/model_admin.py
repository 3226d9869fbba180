"""Operator actions on models: add and change rows, load and unload engines.

Each action that changes something writes one audit row (tenant=None: models
belong to the platform, not to a tenant). The registry is per process, so
load and unload act on the process that handles the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from accounts.services import SYSTEM, Actor, audit_record
from inference.engine import LlamaEngine, ModelLoadError, check_gguf
from inference.models import BUNDLED_PREFIX, LLMModel, RouterAlias
from inference.registry import (
    MemoryBudgetExceeded,
    bundled_available,
    bundled_package,
    bundled_target,
    registry,
)
from llmsite.errors import InvalidRequest


@dataclass(frozen=True)
class ModelState:
    """Where a model stands in this process's registry."""

    state: str  # "loaded", "loading", "failed" or "unloaded"
    error: str = ""
    queue_depth: int = 0
    in_flight: int = 0

    def __str__(self) -> str:
        return f"failed: {self.error}" if self.state == "failed" else self.state


def _state_of(engine: LlamaEngine | None) -> ModelState:
    if engine is None:
        return ModelState("unloaded")
    if engine.load_error is not None:
        return ModelState("failed", error=str(engine.load_error))
    if not engine.is_ready:
        return ModelState("loading")
    return ModelState("loaded", queue_depth=engine.queue_depth, in_flight=engine.in_flight)


def model_state(*, model: LLMModel) -> ModelState:
    return _state_of(registry.get(model.model_id))


def model_file_path(*, model: LLMModel) -> Path | None:
    """The model's GGUF file, without assembling (and checksumming) a bundled one."""
    engine = registry.get(model.model_id)
    if engine is not None:
        return engine.spec.path
    if not model.path.startswith(BUNDLED_PREFIX):
        return Path(model.path).expanduser()
    return bundled_target(model.path)


def model_file_size(*, model: LLMModel) -> int | None:
    """Bytes of the GGUF on disk, or None when there is no file (yet)."""
    path = model_file_path(model=model)
    if path is None:
        return None
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def model_path_check(*, path: str) -> None:
    """Raise ModelLoadError (naming the path) unless `path` can be loaded.

    A bundled model only needs its package installed: the file is assembled on
    first load.
    """
    if path.startswith(BUNDLED_PREFIX):
        if not bundled_available(path):
            raise ModelLoadError(
                f"bundled model package {bundled_package(path)!r} is not installed ({path})"
            )
        return
    check_gguf(Path(path).expanduser())


# -- rows -----------------------------------------------------------------------------
@transaction.atomic
def model_save(
    *,
    model: LLMModel,
    created: bool,
    changed_fields: Iterable[str] = (),
    actor: Actor = SYSTEM,
) -> LLMModel:
    model.save()
    if created:
        audit_record(
            actor=actor,
            action="model.added",
            target=model,
            data={"path": model.path, "enabled": model.enabled},
        )
        return model
    changed = set(changed_fields)
    if "enabled" in changed:
        audit_record(
            actor=actor,
            action="model.enabled" if model.enabled else "model.disabled",
            target=model,
        )
    others = sorted(changed - {"enabled"})
    if others:
        audit_record(
            actor=actor,
            action="model.changed",
            target=model,
            data={name: getattr(model, name) for name in others},
        )
    return model


@transaction.atomic
def model_delete(*, model: LLMModel, actor: Actor = SYSTEM) -> None:
    # A deleted row must not leave its engine holding memory until a restart.
    registry.unload(model.model_id)
    audit_record(actor=actor, action="model.deleted", target=model, data={"path": model.path})
    model.delete()


@transaction.atomic
def alias_save(
    *,
    alias: RouterAlias,
    models: list[LLMModel] | None = None,
    created: bool,
    actor: Actor = SYSTEM,
) -> RouterAlias:
    """Save a router alias; `models`, when given, become its candidates in fallback order."""
    alias.save()
    if models is not None:
        alias.candidates.all().delete()
        for position, model in enumerate(models):
            alias.candidates.create(model=model, position=position)
    audit_record(
        actor=actor,
        action="alias.added" if created else "alias.changed",
        target=alias,
        data={
            "strategy": alias.strategy,
            "enabled": alias.enabled,
            "candidates": [c.model.model_id for c in alias.candidates.select_related("model")],
        },
    )
    return alias


# -- engines --------------------------------------------------------------------------
def _require_enabled(model: LLMModel) -> None:
    if model.is_remote:
        raise InvalidRequest(
            f"{model.model_id} is served by a remote backend; there is nothing to load here.",
            code="model_remote",
        )
    if not model.enabled:
        raise InvalidRequest(
            f"{model.model_id} is disabled; enable it before loading it.", code="model_disabled"
        )


def model_load(*, model: LLMModel, actor: Actor = SYSTEM, wait: float = 0.0) -> ModelState:
    """Start loading `model` (a no-op when its engine is already up) and wait up to `wait` s.

    Loading goes on in the engine's thread after `wait`; the state says where it
    stood then.
    """
    _require_enabled(model)
    before = registry.get(model.model_id)
    try:
        engine = registry.engine_for(model)
    except (ModelLoadError, MemoryBudgetExceeded) as exc:
        # A bundled package missing or corrupt, or no room left in the budget.
        state = ModelState("failed", error=str(exc))
    else:
        if engine is before:
            return _state_of(engine)
        if wait > 0:
            # A failure is reported through the state below.
            with contextlib.suppress(ModelLoadError):
                engine.wait_ready(wait)
        state = _state_of(engine)
    if state.state == "failed":
        audit_record(
            actor=actor, action="model.load_failed", target=model, data={"error": state.error}
        )
    else:
        audit_record(
            actor=actor,
            action="model.loaded",
            target=model,
            data={"path": model.path, "state": state.state},
        )
    return state


def model_unload(*, model: LLMModel, actor: Actor = SYSTEM) -> bool:
    """Unload `model` once its queued requests finish; False when it was not loaded."""
    if not registry.unload(model.model_id):
        return False
    audit_record(actor=actor, action="model.unloaded", target=model)
    return True


def model_reload(*, model: LLMModel, actor: Actor = SYSTEM, wait: float = 0.0) -> ModelState:
    _require_enabled(model)
    model_unload(model=model, actor=actor)
    return model_load(model=model, actor=actor, wait=wait)
