"""The seed system's own API: LLM-Runner-Router's client and servers, unchanged.

Request bodies and response reads are taken field by field from its
examples/API.md: the `LLMAPIClient` (completion, chatCompletion,
streamCompletion, batch), the basic server's /v1/batch and /health, and the
advanced server's /v1/compare, /v1/analyze and /admin/stats. Only the token
budgets are the tests' own (`options.maxTokens` in the client), kept tiny.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.services import tenant_models_set
from billing.models import UsageRecord
from inference.extras import SENTIMENT_LABELS
from inference.registry import registry
from tests.conftest import MODEL
from tests.helpers import read_stream

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loaded(gemma, tenant):
    # One model for the tenant, so that `auto` (and so a missing `model`) has one
    # answer to check whichever other models the database holds.
    tenant_models_set(tenant=tenant, models=[gemma], all_models=False)
    # Loaded before the request: on a busy machine a first load can outlast the
    # request's wait for it, and that 503 is not what these tests are about.
    registry.engine_for(gemma).wait_ready(600)


# -- the client's bodies ------------------------------------------------------------------
def completion_body(prompt: str, *, max_tokens: int, stream: bool = False) -> dict:
    # LLMAPIClient.completion / streamCompletion: no `model`.
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "stream": stream}


def chat_body(messages: list[dict], *, max_tokens: int) -> dict:
    # LLMAPIClient.chatCompletion: no `model`.
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0.7, "stream": False}


def post(client, url: str, body: dict, request_id: str = "seed-1"):
    return client.post(url, body, format="json", HTTP_X_REQUEST_ID=request_id)


def assert_error(response, status: int, *, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


# -- completion and chat without `model` --------------------------------------------------
def test_a_completion_without_model_is_routed_and_names_the_model_that_answered(client):
    r = post(client, "/v1/completions", completion_body("What is AI?", max_tokens=2))
    assert r.status_code == 200, r.content
    body = r.json()
    assert isinstance(body["choices"][0]["text"], str)  # completion.choices[0].text
    assert body["model"] == MODEL
    assert r["x-llmsite-model"] == MODEL
    record = UsageRecord.objects.get(request_id="seed-1")
    assert record.model_id == MODEL and record.endpoint == "completions"
    assert record.completion_tokens == body["usage"]["completion_tokens"] == 2


def test_a_chat_without_model_is_routed_and_names_the_model_that_answered(client):
    messages = [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing well, thank you!"},
        {"role": "user", "content": "Can you help me with math?"},
    ]
    r = post(client, "/v1/chat/completions", chat_body(messages, max_tokens=2))
    assert r.status_code == 200, r.content
    body = r.json()
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["model"] == MODEL
    record = UsageRecord.objects.get(request_id="seed-1")
    assert record.model_id == MODEL and record.endpoint == "chat.completions"


def test_a_missing_model_routes_like_auto(client):
    # The same greedy request, once as `auto`, once without a model: same text, same model.
    body = {"prompt": "One, two,", "max_tokens": 3, "temperature": 0}
    named = post(client, "/v1/completions", {**body, "model": "auto"}, "seed-auto").json()
    missing = post(client, "/v1/completions", body, "seed-missing").json()
    assert missing["model"] == named["model"] == MODEL
    assert missing["choices"][0]["text"] == named["choices"][0]["text"]


def test_a_streamed_completion_without_model_reads_as_the_client_reads_it(client):
    r = post(client, "/v1/completions", completion_body("A robot", max_tokens=3, stream=True))
    assert r.status_code == 200
    # streamCompletion: every `data: ` line but [DONE] is JSON with choices[0].text.
    tokens = []
    for line in read_stream(r).split("\n"):
        if line.startswith("data: ") and "[DONE]" not in line:
            data = json.loads(line[6:])
            if data["choices"][0]["text"]:
                tokens.append(data["choices"][0]["text"])
            assert data["model"] == MODEL
    assert tokens
    record = UsageRecord.objects.get(request_id="seed-1")
    assert record.model_id == MODEL and record.completion_tokens == 3


def test_a_streamed_chat_without_model_names_the_model_that_answered(client):
    body = {**chat_body([{"role": "user", "content": "Hi"}], max_tokens=2), "stream": True}
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == 200
    events = [e for e in read_stream(r).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {chunk["model"] for chunk in chunks} == {MODEL}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert UsageRecord.objects.get(request_id="seed-1").model_id == MODEL


def test_a_completion_without_model_or_prompt_is_a_400_naming_prompt(client):
    assert_error(post(client, "/v1/completions", {"max_tokens": 2}), 400, param="prompt")


def test_a_null_model_is_still_refused(client):
    body = {"model": None, "prompt": "x", "max_tokens": 1}
    assert_error(post(client, "/v1/completions", body), 400, param="model")


# -- /v1/batch ----------------------------------------------------------------------------
def test_a_seed_batch_gets_the_seed_answer(client):
    # clientExamples(): client.batch([{prompt, max_tokens}, ...]), budgets made tiny.
    requests = [
        {"prompt": "What is 2+2?", "max_tokens": 2},
        {"prompt": "What is the capital of France?", "max_tokens": 2},
        {"prompt": "Explain photosynthesis briefly", "max_tokens": 3, "temperature": 0},
    ]
    r = post(client, "/v1/batch", {"requests": requests}, "seed-batch")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "batch"
    assert body["total"] == 3 and body["successful"] == 3 and body["failed"] == 0
    assert [result["index"] for result in body["results"]] == [0, 1, 2]
    for result, wanted in zip(body["results"], [2, 2, 3]):
        assert result["success"] is True
        assert isinstance(result["result"]["text"], str)
        assert result["result"]["tokens"] == wanted
        assert result["result"]["model"] == MODEL
        assert isinstance(result["result"]["latency"], int)
    assert body["totals"]["completion_tokens"] == 7
    records = UsageRecord.objects.filter(request_id__startswith="seed-batch-")
    assert sorted(records.values_list("model_id", flat=True)) == [MODEL] * 3
    assert set(records.values_list("endpoint", flat=True)) == {"completions"}


def test_a_seed_batch_item_that_fails_fails_alone_with_the_seeds_error_string(client):
    requests = [
        {"prompt": "Hi", "max_tokens": 1},
        {"prompt": "Hi", "max_tokens": 0},
        "nope",
        {"max_tokens": 1},
    ]
    r = post(client, "/v1/batch", {"requests": requests})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["total"] == 4 and body["successful"] == 1 and body["failed"] == 3
    ok, bad, junk, empty = body["results"]
    assert ok["success"] is True and ok["status_code"] == 200
    assert bad["success"] is False and bad["status_code"] == 400
    assert isinstance(bad["error"], str) and bad["error"]
    assert bad["error_detail"]["param"] == "max_tokens"
    assert "result" not in bad
    assert junk["success"] is False and junk["status_code"] == 400
    assert empty["success"] is False and empty["error_detail"]["param"] == "prompt"


def test_a_seed_batch_item_with_messages_is_a_chat(client):
    item = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    r = post(client, "/v1/batch", {"requests": [item]}, "seed-chat")
    result = r.json()["results"][0]
    assert result["success"] is True and isinstance(result["result"]["text"], str)
    assert UsageRecord.objects.get(request_id="seed-chat-0").endpoint == "chat.completions"


def test_an_llmsite_batch_keeps_its_own_answer(client):
    item = {
        "url": "/v1/completions",
        "body": {"model": MODEL, "prompt": "Hi", "max_tokens": 1},
    }
    body = post(client, "/v1/batch", {"requests": [item]}).json()
    assert body["object"] == "batch.result" and body["data"][0]["status_code"] == 200


def test_an_llmsite_batch_item_with_neither_forms_fields_still_fails_alone(client):
    items = [
        {"custom_id": "x"},
        {"url": "/v1/completions", "body": {"prompt": "Hi", "max_tokens": 1}},
    ]
    body = post(client, "/v1/batch", {"requests": items}).json()
    assert body["object"] == "batch.result"
    assert [entry["status_code"] for entry in body["data"]] == [400, 200]


def test_a_batch_mixing_both_forms_is_a_400(client):
    items = [{"prompt": "Hi"}, {"url": "/v1/completions", "body": {"prompt": "Hi"}}]
    assert_error(post(client, "/v1/batch", {"requests": items}), 400, param="requests")
    assert not UsageRecord.objects.exclude(request_id="seed-1").exists()


@pytest.mark.parametrize("body", [{}, {"requests": "What is 2+2?"}, {"requests": []}])
def test_a_seed_batch_without_a_requests_array_is_a_400(client, body):
    assert_error(post(client, "/v1/batch", body), 400, param="requests")


# -- /v1/compare --------------------------------------------------------------------------
def test_a_seed_compare_gets_the_seed_answer(client):
    body = {
        "prompt": "The capital of France is",
        "models": [MODEL, "auto"],
        "options": {"maxTokens": 2, "temperature": 0},
    }
    r = post(client, "/v1/compare", body, "seed-cmp")
    assert r.status_code == 200, r.content
    answer = r.json()
    assert answer["object"] == "comparison"
    assert answer["prompt"] == body["prompt"]
    assert answer["models"] == body["models"]
    assert answer["request_id"] == r["x-request-id"] == "seed-cmp"
    first, second = answer["results"]
    assert first["model"] == MODEL and second["model"] == "auto"
    for result in answer["results"]:
        assert result["success"] is True
        assert result["result"]["tokens"] == 2
    assert first["result"]["model"] == MODEL
    # `auto` may pick either bundled model for a completion; on the same one, greedy
    # decoding of the same prompt shows the options reached both entries.
    if second["result"]["model"] == MODEL:
        assert first["result"]["text"] == second["result"]["text"]


def test_a_seed_compare_takes_openai_names_in_options_too(client):
    body = {"prompt": "Hi", "models": [MODEL, "auto"], "options": {"max_tokens": 1}}
    answer = post(client, "/v1/compare", body).json()
    assert [result["result"]["tokens"] for result in answer["results"]] == [1, 1]


def test_an_unknown_model_fails_its_seed_compare_entry_alone(client):
    body = {"prompt": "Hi", "models": [MODEL, "nope"], "options": {"maxTokens": 1}}
    answer = post(client, "/v1/compare", body).json()
    ok, missing = answer["results"]
    assert ok["success"] is True
    assert missing["success"] is False and missing["status_code"] == 404
    assert "nope" in missing["error"] and missing["error_detail"]["code"] == "model_not_found"


def test_a_compare_without_options_keeps_llmsites_answer(client):
    body = {"prompt": "Hi", "models": [MODEL, "auto"], "max_tokens": 1}
    assert post(client, "/v1/compare", body).json()["object"] == "compare.result"


@pytest.mark.parametrize(
    ("options", "param", "code"),
    [
        ("fast", "options", "invalid_type"),
        ({"maxTokens": 0}, "options.maxTokens", "invalid_value"),
        ({"temperature": 9}, "options.temperature", "invalid_value"),
        ({"topK": 40}, "options.topK", "unsupported_parameter"),
        ({"colour": "blue"}, "options.colour", "unknown_parameter"),
        ({"stream": True}, "options.stream", "unknown_parameter"),
        ({"maxTokens": 2, "max_tokens": 2}, "options.max_tokens", "invalid_value"),
    ],
)
def test_bad_seed_compare_options_are_a_400_naming_the_option(client, options, param, code):
    body = {"prompt": "Hi", "models": [MODEL, "auto"], "options": options}
    assert_error(post(client, "/v1/compare", body), 400, param=param, code=code)


def test_an_option_also_set_at_the_top_level_is_a_400(client):
    body = {"prompt": "Hi", "models": [MODEL, "auto"], "max_tokens": 2, "options": {"maxTokens": 2}}
    assert_error(post(client, "/v1/compare", body), 400, param="options.maxTokens")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"models": [MODEL, "auto"], "options": {}}, "prompt"),
        ({"prompt": "Hi", "options": {}}, "models"),
        ({"prompt": "Hi", "models": MODEL, "options": {}}, "models"),
    ],
)
def test_a_seed_compare_without_prompt_or_models_array_is_a_400(client, body, param):
    assert_error(post(client, "/v1/compare", body), 400, param=param)


def test_a_seed_compare_without_a_key_is_a_401(anon_client):
    body = {"prompt": "Hi", "models": [MODEL, "auto"], "options": {}}
    assert_error(post(anon_client, "/v1/compare", body), 401)


# -- /v1/analyze --------------------------------------------------------------------------
def test_a_seed_analysis_reads_as_the_seed_server_answered(client):
    text = "Great food, but the waiter was rude."
    r = post(client, "/v1/analyze", {"text": text, "analysis_types": ["sentiment"]}, "seed-an")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "analysis"
    assert body["text"] == text  # under 100 characters: quoted whole
    assert body["request_id"] == "seed-an"
    assert body["results"]["sentiment"] in SENTIMENT_LABELS  # the plain label
    assert body["results"]["sentiment_score"] == body["sentiment"]["score"]
    assert set(body["results"]) == {"sentiment", "sentiment_score"}
    assert UsageRecord.objects.get(request_id="seed-an").model_id == MODEL


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"analysis_types": ["sentiment"]}, "text"),
        ({"text": "Fine.", "analysis_types": ["emotion"]}, "analysis_types.0"),
        ({"text": "Fine.", "analysis_types": []}, "analysis_types"),
        ({"text": "Fine.", "analysis_types": "sentiment"}, "analysis_types"),
        ({"text": "Fine.", "analysis_types": ["summary"], "tasks": ["summary"]}, "analysis_types"),
    ],
)
def test_a_bad_seed_analysis_body_is_a_400(client, body, param):
    assert_error(post(client, "/v1/analyze", body), 400, param=param)


# -- /health and the admin stats ----------------------------------------------------------
def test_health_answers_the_seeds_fields_without_auth_or_model_names(gemma):
    r = Client().get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["timestamp"].endswith("Z")
    assert body["version"]
    assert body["modelsLoaded"] >= 1 and body["models"]["loaded"] == body["modelsLoaded"]
    assert set(body["models"]) >= {"loaded", "loading", "failed"}
    assert MODEL not in r.content.decode()


def test_staff_stats_carry_the_seeds_admin_stats(gemma, client):
    post(client, "/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    staff = get_user_model().objects.create_user(username="ops", password="x", is_staff=True)
    ops = APIClient()
    ops.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(staff).access_token}")
    body = ops.get("/api/admin/stats").json()
    server = body["server"]
    assert server["uptime"] == body["uptime_s"]
    assert server["requests"] == body["requests"] >= 1
    assert server["errors"] == body["errors"]
    assert server["memory"]["rss"] > 0 and server["cpu"]["user"] >= 0
    assert body["router"]["modelsLoaded"] == body["models_loaded"]
    assert body["metrics"]["requests"] == body["requests"]
    assert body["object"] == "llmsite.stats"  # today's fields stay


def test_the_schema_documents_both_forms(gemma):
    schema = Client().get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    assert "SeedBatchItemRequest" in components
    assert "options" in components["CompareRequestRequest"]["properties"]
    assert "analysis_types" in components["AnalyzeRequestRequest"]["properties"]
    assert "model" not in components["CompletionRequestRequest"].get("required", [])
    for path in ("/v1/batch", "/v1/compare", "/v1/analyze"):
        examples = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        names = set(examples["examples"])
        assert len(names) == 2 and any("LLM-Runner-Router" in name for name in names)
