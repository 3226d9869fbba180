from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from inference import signals  # noqa: F401 - connects the receivers
        from inference.seed_api import health_models
        from llmsite.health import health_source_register

        health_source_register(health_models)
