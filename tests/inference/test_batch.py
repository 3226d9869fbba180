from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_issue
from billing.models import UsageRecord
from billing.services import limits_set
from tests.conftest import MODEL, quota_backends

pytestmark = pytest.mark.django_db

URL = "/v1/batch"


def batch(client, requests, request_id="batch-1", **extra):
    body = {"requests": requests, **extra}
    return client.post(URL, body, format="json", HTTP_X_REQUEST_ID=request_id)


def chat(content="Say hi.", **body):
    return {
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
            "temperature": 0,
            **body,
        },
    }


def embedding(text="hello", **body):
    return {"url": "/v1/embeddings", "body": {"model": MODEL, "input": text, **body}}


def completion(**body):
    return {
        "url": "/v1/completions",
        "body": {"model": MODEL, "prompt": "One, two,", "max_tokens": 2, "temperature": 0, **body},
    }


def test_batch_answers_each_item_in_order_with_totals(client):
    items = [
        {"custom_id": "a", **chat()},
        {"custom_id": "b", **completion()},
        {"custom_id": "c", **embedding()},
        {"custom_id": "d", "url": "/v1/chat/completions", "body": {"model": MODEL}},
        {"custom_id": "e", **embedding(model="no-such-model")},
    ]
    r = batch(client, items)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "batch.result"
    data = body["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3, 4]
    assert [d["custom_id"] for d in data] == ["a", "b", "c", "d", "e"]
    assert [d["status_code"] for d in data] == [200, 200, 200, 400, 404]
    assert data[0]["response"]["object"] == "chat.completion"
    assert data[1]["response"]["object"] == "text_completion"
    assert data[2]["response"]["object"] == "list"
    assert data[3]["error"]["param"] == "messages"
    assert data[3]["error"]["type"] == "invalid_request_error"
    assert data[4]["error"]["code"] == "model_not_found"
    assert "response" not in data[3] and "error" not in data[0]

    usages = [d["response"]["usage"] for d in data[:3]]
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion_tokens = sum(u.get("completion_tokens", 0) for u in usages)
    totals = body["totals"]
    assert totals["requests"] == 5
    assert totals["succeeded"] == 3
    assert totals["failed"] == 2
    assert totals["prompt_tokens"] == prompt
    assert totals["completion_tokens"] == completion_tokens
    assert totals["total_tokens"] == prompt + completion_tokens
    assert isinstance(totals["latency_ms"], int) and totals["latency_ms"] >= 0


def test_each_item_leaves_exactly_one_usage_record_and_the_batch_none(client):
    items = [chat(), embedding(), {"url": "/v1/embeddings", "body": {"model": MODEL}}]
    r = batch(client, items, request_id="batch-rec")
    assert r.status_code == 200, r.content
    records = {rec.request_id: rec for rec in UsageRecord.objects.all()}
    assert sorted(records) == ["batch-rec-0", "batch-rec-1", "batch-rec-2"]
    assert records["batch-rec-0"].endpoint == "chat.completions"
    assert records["batch-rec-0"].status == "ok"
    assert records["batch-rec-0"].completion_tokens >= 1
    assert records["batch-rec-1"].endpoint == "embeddings"
    assert records["batch-rec-2"].status == "error"
    assert records["batch-rec-2"].prompt_tokens == 0


@pytest.fixture(params=quota_backends())
def backend(request, settings):
    settings.LLMSITE_QUOTA_BACKEND = request.param
    return request.param


def test_items_past_the_keys_rpm_get_429_while_the_others_answer(
    backend, tenant, gemma, fresh_minute
):
    key, raw = api_key_issue(tenant=tenant, name="rpm")
    limits_set(tenant=tenant, api_key=key, rpm=3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    r = batch(client, [embedding(f"text {i}") for i in range(4)], request_id="batch-rpm")
    assert r.status_code == 200, r.content
    codes = sorted(d["status_code"] for d in r.json()["data"])
    # Three items fit the limit: the envelope itself took no request of it.
    assert codes == [200, 200, 200, 429]
    refused = next(d for d in r.json()["data"] if d["status_code"] == 429)
    assert refused["error"]["code"] == "rate_limit_exceeded"
    assert r["x-ratelimit-limit-requests"] == "3"
    assert r["x-ratelimit-remaining-requests"] == "0"
    statuses = sorted(UsageRecord.objects.values_list("status", flat=True))
    assert statuses == ["ok", "ok", "ok", "rejected"]


def test_a_batch_stays_within_the_tenants_concurrency_limit(client, tenant):
    limits_set(tenant=tenant, max_concurrent=1)
    r = batch(client, [embedding(f"text {i}") for i in range(3)], concurrency=3)
    assert r.status_code == 200, r.content
    # Wider than the limit, the batch would refuse its own items with 429.
    assert [d["status_code"] for d in r.json()["data"]] == [200, 200, 200]


def test_a_streaming_item_gets_its_own_400_naming_stream(client):
    r = batch(client, [chat(stream=True), embedding(stream=True), embedding()])
    assert r.status_code == 200, r.content
    first, second, third = r.json()["data"]
    assert first["status_code"] == 400 and first["error"]["param"] == "stream"
    assert second["status_code"] == 400 and second["error"]["param"] == "stream"
    assert third["status_code"] == 200


def test_malformed_items_fail_alone(client):
    items = ["not an object", {"url": "/v1/images", "body": {}}, {"url": "/v1/embeddings"}]
    r = batch(client, items)
    assert r.status_code == 200, r.content
    data = r.json()["data"]
    assert [d["status_code"] for d in data] == [400, 400, 400]
    assert data[0]["custom_id"] is None
    assert data[1]["error"]["param"] == "url"
    assert data[2]["error"]["param"] == "body"
    assert r.json()["totals"]["failed"] == 3
    assert UsageRecord.objects.filter(status="error").count() == 3


def test_a_batch_over_the_limit_is_refused_naming_requests(client, settings):
    settings.LLMSITE_BATCH_MAX = 2
    r = batch(client, [embedding(), embedding(), embedding()], request_id="batch-big")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "requests"
    assert "at most 2" in err["message"]
    # Refused before anything ran: one record, like any refused request, and no item's.
    assert list(UsageRecord.objects.values_list("request_id", "status")) == [("batch-big", "error")]


def test_an_empty_or_malformed_envelope_is_a_400(client):
    assert batch(client, []).json()["error"]["param"] == "requests"
    r = client.post(URL, {"requests": [embedding()], "parallel": 2}, format="json")
    assert r.status_code == 400 and r.json()["error"]["param"] == "parallel"
    r = batch(client, [embedding()], concurrency=0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "concurrency"


def test_batch_without_a_key_is_401(anon_client):
    r = anon_client.post(URL, {"requests": [embedding()]}, format="json")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert not UsageRecord.objects.exists()


def test_batch_is_in_the_schema(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/v1/batch:" in schema.content
