"""Auth generations: per-tenant counters that every change to an authenticated
key's world bumps, and the per-process caches that hold while they stand.

A process caches what it loaded for a tenant (keys here in accounts, routes in
inference.router) with the tenant's AuthGeneration values read at load time; a
hit re-reads those two counters (one primary-key read) and drops the entry when
they moved. Every change bumps them in its own transaction (accounts/signals.py,
billing/signals.py, inference/signals.py).
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F

from accounts.models import AuthGeneration

_CACHE_MAX = 10_000


class GenerationCache:
    """Per-process entries that hold while their tenant's AuthGeneration values
    are the ones read when the entry was loaded, for LLMSITE_KEY_CACHE_SECONDS
    at most (the key cache in accounts.services, the route cache in inference.router)."""

    def __init__(self) -> None:
        # key -> (value, tenant id, generations, time.monotonic() when loaded)
        self._entries: dict = {}

    def get(self, key, current: tuple[int, int] | None = None):
        """(value, generations) on a hit; (None, generations read or None) on a miss.

        `current`: the tenant's values this request has already read.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None, current
        value, tenant_id, generations, loaded = entry
        if time.monotonic() - loaded > settings.LLMSITE_KEY_CACHE_SECONDS:
            self._entries.pop(key, None)
            return None, current
        current = current or auth_generations(tenant_id)
        if current != generations:
            self._entries.pop(key, None)
            return None, current
        return value, current

    def put(self, key, value, tenant_id: int, generations: tuple[int, int]) -> None:
        if settings.LLMSITE_KEY_CACHE_SECONDS <= 0:
            return
        if len(self._entries) >= _CACHE_MAX:
            self._entries.clear()  # rare: a full reload beats bookkeeping on every hit
        self._entries[key] = (value, tenant_id, generations, time.monotonic())

    def clear(self) -> None:
        self._entries.clear()


def auth_generations(tenant_id: int) -> tuple[int, int]:
    """(this tenant's, the global) AuthGeneration values: what per-process caches check."""
    # Raw SQL: this runs on every authenticated request, and the ORM's query
    # compilation would cost more than the read itself.
    table = connection.ops.quote_name(AuthGeneration._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT scope, value FROM {table} WHERE scope IN (%s, %s)",  # noqa: S608
            [tenant_id, AuthGeneration.GLOBAL],
        )
        values = dict(cursor.fetchall())
    return (values.get(tenant_id, 0), values.get(AuthGeneration.GLOBAL, 0))


def auth_generation_bump(*, tenant_id: int | None) -> None:
    """Make every process reload the keys of one tenant (None: of every tenant).

    Call it inside the transaction that makes the change: the bump commits (or
    rolls back) with it, so no process can cache the old rows under the new value.
    """
    scope = AuthGeneration.GLOBAL if tenant_id is None else tenant_id
    rows = AuthGeneration.objects.filter(scope=scope)
    if rows.update(value=F("value") + 1):
        return
    try:
        with transaction.atomic():
            AuthGeneration.objects.create(scope=scope, value=1)
    except IntegrityError:  # created by a concurrent bump
        rows.update(value=F("value") + 1)
