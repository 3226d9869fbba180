from django.apps import AppConfig
from django.conf import settings

from llmsite.env import ConfigError


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from inference import signals  # noqa: F401 - connects the receivers
        from inference.models import STRATEGIES

        # Here rather than in settings.py: the list has one owner, and settings import no app.
        strategy = settings.LLMSITE_ROUTER_STRATEGY
        if strategy not in STRATEGIES:
            raise ConfigError(f"LLMSITE_ROUTER_STRATEGY: unknown strategy {strategy!r}")

        from inference.seed_api import health_models
        from llmsite.health import health_source_register

        health_source_register(health_models)
