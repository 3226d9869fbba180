"""Django's PostgreSQL backend, failing fast while the database is down, and
preparing the statement that every request runs (PreparedCursor).

With a pool (settings: DATABASES OPTIONS "pool"), a request that finds no idle
connection waits up to the pool's timeout for one. Under load that wait is
right: a connection comes back within milliseconds. During an outage, though,
none ever comes, and every request would hang the full timeout (10 s) before
its 503. So once a connection fails (none to be had within the timeout, or one
found broken), the pool's wait drops to `DOWN_TIMEOUT` until a connection is
handed out again; the pool keeps reconnecting in the background, and the first
request after the database's return gets its connection and restores the wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper
from django.db.backends.postgresql.operations import (
    DatabaseOperations as PostgreSQLDatabaseOperations,
)

# Seconds a request waits for a pooled connection while the database is known down.
DOWN_TIMEOUT = 0.5
# psycopg_pool's default wait, where settings give none.
POOL_TIMEOUT = 30.0


class PreparedCursor(psycopg.Cursor):
    """Parameters bound on the server, and every statement prepared: PostgreSQL
    parses and plans it on a connection's first run only. Django turns psycopg's
    automatic preparation off and binds on the client, which suits the ORM's
    varied queries; a statement that every request runs is worth its plan."""

    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> PreparedCursor:
        return super().execute(query, params, prepare=True, binary=binary)


class DatabaseOperations(PostgreSQLDatabaseOperations):
    def last_executed_query(self, cursor: Any, sql: str, params: Any) -> str:
        # A prepared statement keeps no query text on its cursor: the query log
        # (DEBUG, CaptureQueriesContext) shows it with its values all the same.
        if isinstance(cursor, PreparedCursor):
            try:
                return self.compose_sql(sql, params)
            except psycopg.errors.DataError:
                return sql
        return super().last_executed_query(cursor, sql, params)


# psycopg's prepare_threshold where Django gives None: a count no statement
# reaches, so only PreparedCursor's statements are prepared.
PREPARE_ONLY_WHEN_ASKED = 2**31 - 1


class DatabaseWrapper(PostgreSQLDatabaseWrapper):
    ops_class = DatabaseOperations

    def get_connection_params(self) -> dict[str, Any]:
        """Django's, except that PreparedCursor may prepare. Django sets psycopg's
        prepare_threshold to None, which turns preparation off on the connection
        even where asked for. The ORM's queries bind on the client, which never
        prepares, so a threshold no count reaches leaves them as they were. The
        pool opens its connections with these parameters too."""
        params = super().get_connection_params()
        if params.get("prepare_threshold") is None:
            params["prepare_threshold"] = PREPARE_ONLY_WHEN_ASKED
        return params

    def fetch_one_prepared(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """Run `sql` as a prepared statement and return its first row. Through
        Django's cursor wrapper all the same: the connection is opened (from the
        pool) as for any query, errors map to Django's, the query log and
        execute wrappers see it."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        self.validate_thread_sharing()
        with self.wrap_database_errors:
            raw = PreparedCursor(self.connection)
        # django-stubs type these as taking a CursorWrapper; they take the DB-API cursor they wrap.
        wrap = self.make_debug_cursor if self.queries_logged else self.make_cursor
        cursor = wrap(raw)  # type: ignore[arg-type]
        with cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        try:
            connection = super().get_new_connection(conn_params)
        except (self.Database.OperationalError, self.Database.InterfaceError):
            # psycopg_pool's PoolTimeout is an OperationalError.
            self._database_down()
            raise
        # The pool's own timeout is the breaker's state: one attribute, read by
        # every `getconn`. Two threads racing here (one up, one down) cost at
        # most one long wait or one short one before the next outcome corrects it.
        pool.timeout = self._pool_timeout()
        return connection

    def close(self) -> None:
        if self.connection is not None and self.connection.broken and self.pool is not None:
            self._database_down()
        super().close()

    def _database_down(self) -> None:
        pool = self.pool
        if pool is not None:
            pool.timeout = min(DOWN_TIMEOUT, self._pool_timeout())

    def _pool_timeout(self) -> float:
        options = self.settings_dict["OPTIONS"].get("pool")
        if isinstance(options, dict):
            return float(options.get("timeout", POOL_TIMEOUT))
        return POOL_TIMEOUT
