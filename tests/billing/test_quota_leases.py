from __future__ import annotations

import pytest

from billing.models import ConcurrencyLease, TenantBilling
from billing.quota import QuotaExceeded, RateLimited, quota_reserve, quota_settle
from tests.conftest import quota_backends

pytestmark = pytest.mark.django_db


@pytest.fixture(params=quota_backends())
def backend(request, settings):
    settings.LLMSITE_QUOTA_BACKEND = request.param
    return request.param


def reserve(tenant, request_id="same-client-id"):
    return quota_reserve(
        tenant=tenant,
        api_key=None,
        request_id=request_id,
        prompt_tokens=1,
        max_completion_tokens=1,
        model_pk=None,
    )


def test_requests_sharing_a_client_request_id_still_count_against_max_concurrent(backend, tenant):
    TenantBilling.objects.update_or_create(tenant=tenant, defaults={"max_concurrent": 2})
    tenant.refresh_from_db()
    first = reserve(tenant)
    second = reserve(tenant)
    assert first.lease_id != second.lease_id
    with pytest.raises(RateLimited) as refused:
        reserve(tenant)
    assert not isinstance(refused.value, QuotaExceeded)
    assert refused.value.status == 429
    # Settling one frees exactly one slot, not both.
    quota_settle(reservation=first, prompt_tokens=1, completion_tokens=1)
    third = reserve(tenant)
    with pytest.raises(RateLimited):
        reserve(tenant)
    quota_settle(reservation=second, prompt_tokens=1, completion_tokens=1)
    quota_settle(reservation=third, prompt_tokens=1, completion_tokens=1)
    if backend == "db":
        assert not ConcurrencyLease.objects.exists()


def test_lease_is_not_keyed_by_the_client_request_id(backend, tenant):
    TenantBilling.objects.update_or_create(tenant=tenant, defaults={"max_concurrent": 5})
    tenant.refresh_from_db()
    reservation = reserve(tenant, request_id="client-chosen")
    assert reservation.lease_id != "client-chosen"
    if backend == "db":
        assert list(ConcurrencyLease.objects.values_list("request_id", flat=True)) == [
            reservation.lease_id
        ]
    quota_settle(reservation=reservation, prompt_tokens=1, completion_tokens=1)
