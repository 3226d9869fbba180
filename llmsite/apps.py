import os

from django.apps import AppConfig


class LlmsiteConfig(AppConfig):
    name = "llmsite"

    def ready(self) -> None:
        from llmsite import checks  # noqa: F401 - registers the system checks
        from llmsite.db import forget_inherited_pools

        os.register_at_fork(after_in_child=forget_inherited_pools)
        request_started_quiet()


def request_started_quiet() -> None:
    """Disconnect Django's receivers of request_started.

    Under ASGI, Django sends request_started with `asend`, which runs sync
    receivers in the one shared thread: a crossing there and back before the
    first middleware, on every request, queued behind every other request's
    database work in that thread. Django's two (both sync) have nothing to do
    at a request's start here: database work runs in threads with `pooled`,
    which hands a PostgreSQL connection back after each piece of work, and
    request_finished still runs close_old_connections when each response is
    closed. reset_queries only empties DEBUG's query log, a bounded deque.
    (Django's test utilities connect them again: CaptureQueriesContext on exit.)
    """
    from django.core.signals import request_started
    from django.db import close_old_connections, reset_queries

    request_started.disconnect(reset_queries)
    request_started.disconnect(close_old_connections)
