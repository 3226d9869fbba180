from __future__ import annotations

import logging
import threading

from django.conf import settings

logger = logging.getLogger("llmsite.startup")


def _load() -> None:
    from inference.models import LLMModel
    from inference.registry import registry

    model = LLMModel.objects.enabled().filter(model_id=settings.LLMSITE_DEFAULT_MODEL).first()
    if model is None:
        logger.warning("default model %s is not registered", settings.LLMSITE_DEFAULT_MODEL)
        return
    try:
        registry.engine_for(model)
    except Exception:
        logger.exception("preloading %s failed", model.model_id)


def preload_default_model() -> None:
    """With LLMSITE_PRELOAD=1, start loading the default model without blocking start-up."""
    if settings.LLMSITE_PRELOAD:
        threading.Thread(target=_load, name="preload", daemon=True).start()
