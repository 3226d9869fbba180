"""Limits hold exactly when several OS processes hit them at once."""

from __future__ import annotations

import multiprocessing

import pytest
from django.db import connections
from django.db.models import Sum

from accounts.services import api_key_issue, tenant_get_or_create
from billing.models import DailyUsage, UsageRecord
from billing.services import limits_set
from tests.conftest import quota_backends

PROCESSES = 4


@pytest.fixture(params=quota_backends())
def backend(request, settings):
    settings.LLMSITE_QUOTA_BACKEND = request.param
    return request.param


def _list_models(raw_key: str, attempts: int, barrier, results) -> None:
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    barrier.wait()
    codes = [client.get("/v1/models").status_code for _ in range(attempts)]
    connections.close_all()
    results.put(codes)


def _reserve_and_hold(key_pk: int, attempts: int, barrier, results) -> None:
    from accounts.models import ApiKey
    from billing.quota import quota_reserve
    from llmsite.errors import RateLimited

    key = ApiKey.objects.select_related("tenant").get(pk=key_pk)
    barrier.wait()
    admitted = 0
    for i in range(attempts):
        try:
            quota_reserve(
                tenant=key.tenant,
                api_key=key,
                request_id=f"{key_pk}-{id(barrier)}-{i}-{multiprocessing.current_process().pid}",
                prompt_tokens=1,
                max_completion_tokens=1,
                model_pk=None,
            )
            admitted += 1  # and never settled: the slot stays taken
        except RateLimited:
            pass
    connections.close_all()
    results.put(admitted)


def _run(target, args_for, attempts: int) -> list:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    connections.close_all()  # children must open their own connections
    procs = [
        ctx.Process(target=target, args=(*args_for, attempts, barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return out


@pytest.mark.django_db(transaction=True)
def test_rpm_admits_exactly_n_across_processes(backend, gemma, fresh_minute):
    tenant = tenant_get_or_create(slug="hammer")
    key, raw = api_key_issue(tenant=tenant)
    limits_set(tenant=tenant, api_key=key, rpm=10)
    codes = [c for batch in _run(_list_models, (raw,), attempts=6) for c in batch]
    assert len(codes) == PROCESSES * 6
    assert codes.count(200) == 10
    assert codes.count(429) == PROCESSES * 6 - 10
    records = UsageRecord.objects.filter(api_key=key)
    assert records.filter(status="ok").count() == 10
    assert records.filter(status="rejected").count() == PROCESSES * 6 - 10
    # The roll-up's first insert raced in four processes and lost nothing.
    rolled_up = DailyUsage.objects.filter(tenant=tenant).aggregate(n=Sum("requests"))["n"]
    assert rolled_up == PROCESSES * 6


@pytest.mark.django_db(transaction=True)
def test_concurrency_admits_exactly_m_across_processes(backend):
    tenant = tenant_get_or_create(slug="hammer")
    key, _ = api_key_issue(tenant=tenant)
    limits_set(tenant=tenant, api_key=key, max_concurrent=3)
    admitted = _run(_reserve_and_hold, (key.pk,), attempts=5)
    assert sum(admitted) == 3
