"""Redis down: a reservation fails closed with a clean 503, never a 500 or an admission."""

from __future__ import annotations

import pytest

from billing import quota
from billing.services import limits_set
from llmsite.errors import ServiceUnavailable

pytestmark = pytest.mark.django_db


def test_unreachable_quota_store_is_a_503_not_an_admission(tenant, settings, monkeypatch):
    limits_set(tenant=tenant, rpm=10)
    # Nothing listens on port 1: every command fails to connect.
    monkeypatch.setattr(quota, "_backend", None)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.LLMSITE_QUOTA_BACKEND = "redis"
    with pytest.raises(ServiceUnavailable) as refused:
        quota.quota_reserve(
            tenant=tenant,
            api_key=None,
            request_id="r1",
            prompt_tokens=5,
            max_completion_tokens=5,
            model_pk=None,
        )
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"
    monkeypatch.setattr(quota, "_backend", None)
