"""Bounds a request meets before expensive work: a JSON schema llama.cpp cannot
take, and one tenant filling a model's queue (#16 findings 1 and 16)."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async

from accounts.authentication import principal_from_token
from accounts.services import api_key_issue, tenant_get_or_create
from billing.models import UsageRecord
from inference import services
from inference.services import Streamed
from llmsite.errors import RateLimited

MODEL = "gemma-3-270m"


def _chat(schema: dict) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": 100000},
        {"type": "array", "items": {"type": "integer"}, "minItems": 100000000},
        {"$ref": "https://example.com/schema.json"},
    ],
    ids=["maxLength", "minItems", "remote-ref"],
)
def test_a_schema_past_the_grammar_bounds_is_a_400_naming_response_format(client, schema):
    r = client.post(
        "/v1/chat/completions", json.dumps(_chat(schema)), content_type="application/json"
    )
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["param"] == "response_format"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("depth", [40, 5000])
def test_a_deeply_nested_schema_is_a_400_and_the_server_keeps_serving(client, depth):
    # 40 levels: inside the body's nesting bound, past the schema's; 5000: past both.
    body = json.dumps(_chat({"$SCHEMA": 1})).replace(
        '{"$SCHEMA": 1}', '{"type": "array", "items": ' * depth + '{"type": "string"}' + "}" * depth
    )
    r = client.post("/v1/chat/completions", body, content_type="application/json")
    assert r.status_code == 400
    ok = client.post(
        "/v1/chat/completions",
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        ),
        content_type="application/json",
    )
    assert ok.status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_a_tenant_past_its_queue_share_gets_429_while_another_tenant_is_served(
    api_key, gemma, settings
):
    settings.LLMSITE_TENANT_QUEUE_SHARE = 1
    principal = await sync_to_async(principal_from_token)(api_key)
    other_tenant = await sync_to_async(tenant_get_or_create)(slug="other-co")
    _, other_raw = await sync_to_async(api_key_issue)(tenant=other_tenant, name="o")
    other = await sync_to_async(principal_from_token)(other_raw)
    long = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": 500,
        "stream": True,
    }
    held = await services.chat_completion_create(
        principal=principal, body=long, request_id=f"q-{uuid.uuid4().hex[:8]}"
    )
    assert isinstance(held, Streamed)
    try:
        refused_id = f"q-{uuid.uuid4().hex[:8]}"
        with pytest.raises(RateLimited) as refused:
            await services.chat_completion_create(
                principal=principal, body={**long, "max_tokens": 2}, request_id=refused_id
            )
        assert refused.value.code == "tenant_queue_full"
        assert refused.value.headers["Retry-After"]
        served = await services.chat_completion_create(
            principal=other,
            body={**long, "stream": False, "max_tokens": 2},
            request_id=f"q-{uuid.uuid4().hex[:8]}",
        )
        assert served.body["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        await held.aclose()
    statuses = await sync_to_async(
        lambda: list(
            UsageRecord.objects.filter(request_id=refused_id).values_list("status", flat=True)
        )
    )()
    assert statuses == ["rejected"]
