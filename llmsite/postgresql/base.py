"""Django's PostgreSQL backend, failing fast while the database is down.

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

from typing import Any

from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper

# Seconds a request waits for a pooled connection while the database is known down.
DOWN_TIMEOUT = 0.5
# psycopg_pool's default wait, where settings give none.
POOL_TIMEOUT = 30.0


class DatabaseWrapper(PostgreSQLDatabaseWrapper):
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
