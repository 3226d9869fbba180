import os

from django.apps import AppConfig


class LlmsiteConfig(AppConfig):
    name = "llmsite"

    def ready(self) -> None:
        from llmsite import checks  # noqa: F401 - registers the system checks
        from llmsite.db import forget_inherited_pools

        os.register_at_fork(after_in_child=forget_inherited_pools)
