"""While PostgreSQL is down, requests fail fast instead of waiting out the pool."""

from __future__ import annotations

import os
import time

import pytest
from django.db import OperationalError, connections

from llmsite.env import database_from_url
from llmsite.postgresql.base import DOWN_TIMEOUT, DatabaseWrapper
from tests.live import free_port

POOL_TIMEOUT = 10.0  # as settings.py


def wrapper(alias: str, **settings) -> DatabaseWrapper:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = "postgresql://postgres@127.0.0.1:5432/test"
    entry = {
        **database_from_url("DATABASE_URL", url),
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 2, "timeout": POOL_TIMEOUT}},
        **settings,
    }
    # Django fills in every setting a wrapper reads (it insists on a default).
    configured = connections.configure_settings({"default": entry, alias: entry})[alias]
    return DatabaseWrapper(configured, alias=alias)


@pytest.fixture
def unblocked(django_db_blocker):
    with django_db_blocker.unblock():
        yield


def test_after_a_failed_connection_the_next_attempt_fails_fast(unblocked):
    db = wrapper("breaker_closed_port", PORT=str(free_port()))  # nothing listens there
    try:
        started = time.monotonic()
        with pytest.raises(db.Database.OperationalError):
            db.get_new_connection(db.get_connection_params())
        first = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(db.Database.OperationalError):
            db.get_new_connection(db.get_connection_params())
        second = time.monotonic() - started
    finally:
        db.close_pool()
    assert first >= POOL_TIMEOUT / 2  # the pool waited for a connection the first time
    assert second < POOL_TIMEOUT / 2  # and knew better the second
    assert db.pool is not None


def test_a_healthy_database_keeps_the_full_wait(unblocked):
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("needs PostgreSQL (DATABASE_URL)")
    db = wrapper("breaker_healthy")
    try:
        db.connect()
        with db.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        db.close()
        assert db.pool.timeout == POOL_TIMEOUT
        # As a failure leaves it: the next connection handed out restores the wait.
        db._database_down()
        assert db.pool.timeout == DOWN_TIMEOUT
        db.connect()
        db.close()
        assert db.pool.timeout == POOL_TIMEOUT
    finally:
        db.close_pool()


def test_a_connection_found_broken_makes_the_next_wait_short(unblocked):
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("needs PostgreSQL (DATABASE_URL)")
    db = wrapper("breaker_broken")
    try:
        db.connect()
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        killer = wrapper("breaker_killer", OPTIONS={})
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        killer.close()
        with pytest.raises(OperationalError), db.cursor() as cursor:
            cursor.execute("SELECT 1")
        db.close()
        assert db.pool.timeout == DOWN_TIMEOUT
    finally:
        db.close_pool()
