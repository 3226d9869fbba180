"""An allow-list emptied behind the service's back means no model, not every model."""

from __future__ import annotations

import pytest

from accounts.services import api_key_issue, tenant_models_set
from inference.models import LLMModel
from tests.accounts.conftest import key_client

pytestmark = pytest.mark.django_db


def ids(client):
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


@pytest.fixture
def second(gemma):
    return LLMModel.objects.create(model_id="second", path=gemma.path, n_ctx=256)


def test_deleting_the_tenants_only_allowed_model_leaves_it_no_model(client, tenant, second):
    tenant_models_set(tenant=tenant, models=[second])
    assert ids(client) == {"second"}
    second.delete()
    assert ids(client) == set()
    r = client.post("/v1/completions", {"model": "gemma-3-270m", "prompt": "x"}, format="json")
    assert r.status_code == 404


def test_deleting_the_keys_only_allowed_model_leaves_it_no_model(tenant, gemma, second):
    _, raw = api_key_issue(tenant=tenant, allowed_models=[second])
    c = key_client(raw)
    assert ids(c) == {"second"}
    second.delete()
    assert ids(c) == set()


def test_clearing_the_list_behind_the_services_back_fails_closed(client, tenant, second):
    tenant_models_set(tenant=tenant, models=[second])
    tenant.allowed_models.clear()
    assert ids(client) == set()


def test_every_model_is_an_explicit_choice(client, tenant, gemma, second):
    tenant_models_set(tenant=tenant, models=[], all_models=False)
    assert ids(client) == set()
    tenant_models_set(tenant=tenant, models=[], all_models=True)
    every = set(LLMModel.objects.filter(enabled=True).values_list("model_id", flat=True))
    assert {"gemma-3-270m", "second"} <= every
    assert ids(client) == every
    tenant.refresh_from_db()
    assert tenant.all_models is True


def test_migration_keeps_unrestricted_rows_unrestricted_and_listed_rows_restricted(
    tenant, other_tenant, second
):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("accounts.migrations.0004_allow_lists_fail_closed")
    tenant.allowed_models.set([second])  # a list set before the flag existed
    tenant.refresh_from_db()
    assert tenant.all_models is True
    migration.restricted_where_listed(apps, None)
    tenant.refresh_from_db()
    other_tenant.refresh_from_db()
    assert tenant.all_models is False
    assert other_tenant.all_models is True
