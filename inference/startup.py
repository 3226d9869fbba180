from __future__ import annotations

import logging
import threading

from django.conf import settings

logger = logging.getLogger("llmsite.startup")


def _load() -> None:
    from django.db.models import Q

    from inference.models import BACKEND_LLAMA_CPP, LLMModel
    from inference.registry import registry

    wanted = Q(load_on_start=True) | Q(model_id=settings.LLMSITE_DEFAULT_MODEL)
    models = list(LLMModel.objects.enabled().filter(wanted, backend=BACKEND_LLAMA_CPP))
    if not any(m.model_id == settings.LLMSITE_DEFAULT_MODEL for m in models):
        logger.warning("default model %s is not registered", settings.LLMSITE_DEFAULT_MODEL)
    for model in models:
        try:
            registry.engine_for(model)
        except Exception:
            logger.exception("preloading %s failed", model.model_id)


def preload_default_model() -> None:
    """With LLMSITE_PRELOAD=1 (what `make run` sets), start loading the default
    model and the models marked `load_on_start`, without blocking start-up."""
    if settings.LLMSITE_PRELOAD:
        threading.Thread(target=_load, name="preload", daemon=True).start()
