"""principal_check_inference: the one rule for who may call inference, REST or WebSocket."""

from __future__ import annotations

import pytest

from accounts.authentication import Principal, principal_check_inference
from accounts.models import ApiKey, Tenant
from llmsite.errors import InvalidRequest, PermissionError_


def test_a_key_with_the_inference_scope_may_infer():
    tenant = Tenant(slug="acme")
    key = ApiKey(tenant=tenant, scopes=["inference"])
    principal_check_inference(Principal(tenant=tenant, api_key=key))


def test_a_key_without_the_inference_scope_is_refused():
    tenant = Tenant(slug="acme")
    key = ApiKey(tenant=tenant, scopes=["usage:read"])
    with pytest.raises(PermissionError_, match="inference"):
        principal_check_inference(Principal(tenant=tenant, api_key=key))


def test_a_person_in_no_tenant_is_refused():
    with pytest.raises(PermissionError_, match="not a member"):
        principal_check_inference(Principal(tenant=None))


def test_a_person_in_several_tenants_is_asked_to_name_one_where_the_client_can():
    ambiguous = Principal(tenant=None, tenant_ambiguous=True)
    with pytest.raises(InvalidRequest) as rest:
        principal_check_inference(ambiguous)
    assert rest.value.param == "X-Tenant" and rest.value.code == "tenant_required"
    with pytest.raises(InvalidRequest) as socket:
        principal_check_inference(
            ambiguous, tenant_param="tenant", tenant_hint='"tenant" in the auth message'
        )
    assert socket.value.param == "tenant"
