from __future__ import annotations

import json

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from billing.models import UsageRecord
from inference.extras import KEYWORDS_MAX, SENTIMENT_LABELS, analysis_schema
from inference.serializers import ANALYZE_TASKS, MAX_ANALYZE_CHARS
from tests.conftest import MODEL

pytestmark = pytest.mark.django_db

URL = "/v1/analyze"
# Short: grammar-constrained decoding is slow on CPU, and the summary tends to echo it.
TEXT = "Great food, but the waiter was rude."


def analyze(client, **body):
    body.setdefault("text", TEXT)
    return client.post(URL, body, format="json", HTTP_X_REQUEST_ID="an-1")


def test_analyze_returns_sentiment_keywords_and_summary(client):
    r = analyze(client, model=MODEL)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "analysis"
    assert body["model"] == MODEL
    sentiment = body["sentiment"]
    assert sentiment["label"] in SENTIMENT_LABELS
    assert isinstance(sentiment["score"], float) and 0.0 <= sentiment["score"] <= 1.0
    keywords = body["keywords"]
    assert isinstance(keywords, list) and 1 <= len(keywords) <= KEYWORDS_MAX
    assert all(isinstance(k, str) and k for k in keywords)
    assert isinstance(body["summary"], str) and body["summary"]
    usage = body["usage"]
    assert usage["completion_tokens"] >= 1
    record = UsageRecord.objects.get()
    assert (record.request_id, record.endpoint, record.model_id) == ("an-1", "analyze", MODEL)
    assert record.completion_tokens == usage["completion_tokens"]
    assert r["x-llmsite-model"] == MODEL


def test_analyze_returns_only_the_tasks_asked_through_auto(client):
    r = analyze(client, tasks=["sentiment"])
    assert r.status_code == 200, r.content
    body = r.json()
    # The suite's gemma fixture lets Gemma chat too, so auto may pick either.
    assert body["model"] in {MODEL, "qwen2.5-coder-0.5b-instruct"}
    assert body["sentiment"]["label"] in SENTIMENT_LABELS
    assert "keywords" not in body and "summary" not in body


def test_the_answer_grammar_is_finite_so_generation_ends():
    # No unbounded repetition: every string and array has a maximum length.
    grammar = json_schema_to_gbnf(json.dumps(analysis_schema(list(ANALYZE_TASKS))))
    assert "*" not in grammar and "+" not in grammar


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tasks": ["sentiment", "translation"]}, "tasks"),
        ({"tasks": []}, "tasks"),
        ({"text": "   "}, "text"),
        ({"text": "x" * (MAX_ANALYZE_CHARS + 1)}, "text"),
        ({"temperature": 1}, "temperature"),
    ],
)
def test_an_invalid_analyze_is_a_400(client, body, param):
    r = analyze(client, **body)
    assert r.status_code == 400, r.content
    assert r.json()["error"]["param"].startswith(param)


def test_analyze_with_an_unknown_model_is_404(client):
    r = analyze(client, model="no-such-model")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


def test_analyze_without_a_key_is_401(anon_client):
    r = anon_client.post(URL, {"text": TEXT}, format="json")
    assert r.status_code == 401
    assert not UsageRecord.objects.exists()


def test_analyze_is_in_the_schema(client):
    assert b"/v1/analyze:" in client.get("/api/schema/").content
