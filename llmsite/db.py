"""Database work from the event loop: one thread hop, then the connection goes back.

Under ASGI every request has a connection of its own, which Django closes when
the request ends. On PostgreSQL that close hands it back to the process's pool
(settings: DATABASES OPTIONS "pool"). A stream lasts minutes, though, and would
hold its connection all that time for a few milliseconds of queries at its start
and end: `pooled` gives it back as soon as each piece of work is done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections

P = ParamSpec("P")
R = TypeVar("R")


def pooled(func: Callable[P, R]) -> Callable[P, R]:
    """`func`, then this thread's connection back to its pool (outside a transaction)."""

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            release()

    return run


def fetch_one_prepared(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """Run a statement that every request runs, and return its first row: prepared
    on the server where the backend can (llmsite.postgresql), so PostgreSQL plans
    it once per pooled connection; through a plain cursor elsewhere."""
    db = connections[DEFAULT_DB_ALIAS]
    prepared = getattr(db, "fetch_one_prepared", None)
    if prepared is not None:
        return prepared(sql, params)
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def release() -> None:
    """Give a pooled connection back now. Inside a transaction (a caller's, or a
    test's) it stays; without a pool (SQLite) reconnecting would cost more than
    keeping it, so it stays too."""
    if connection.connection is None or connection.in_atomic_block:
        return
    if getattr(connection, "pool", None) is None:
        return
    connection.close()


# A forked child's copies of the parent's pooled connections: kept referenced,
# never used or closed (closing one would end the parent's session on its socket).
_inherited: list[object] = []


def forget_inherited_pools() -> None:
    """In a process just forked: drop the parent's connection pools and connections.

    `connections.close_all()` hands pooled connections back to the pool, which
    keeps them open, so a child forked after it (multiprocessing's "fork") would
    share the parent's sockets, and two processes would interleave statements
    on one session. The child opens its own pool on first use instead. `serve`
    starts its processes with exec, not fork; this is for everything else.
    """
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        _inherited.append(conn.connection)
        conn.connection = None
        pools = getattr(type(conn), "_connection_pools", None)
        if pools:
            _inherited.extend(pools.values())
            pools.clear()
