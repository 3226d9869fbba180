from __future__ import annotations

import pytest

from billing.models import UsageRecord
from tests.conftest import MODEL

pytestmark = pytest.mark.django_db

URL = "/v1/compare"


def compare(client, request_id="cmp-1", **body):
    body.setdefault("max_tokens", 3)
    body.setdefault("temperature", 0)
    return client.post(URL, body, format="json", HTTP_X_REQUEST_ID=request_id)


def test_compare_runs_the_model_id_and_auto_with_their_figures(client):
    r = compare(client, models=[MODEL, "auto"], prompt="One, two, three,")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "compare.result"
    by_id, by_auto = body["data"]
    assert (by_id["model"], by_auto["model"]) == (MODEL, "auto")
    for entry in (by_id, by_auto):
        assert entry["status_code"] == 200
    assert by_id["answered_model"] == MODEL
    # Both bundled models serve completions: auto may pick either.
    assert by_auto["answered_model"] in {MODEL, "qwen2.5-coder-0.5b-instruct"}
    for entry in (by_id, by_auto):
        assert isinstance(entry["text"], str)
        assert entry["finish_reason"] in {"stop", "length"}
        usage = entry["usage"]
        assert usage["completion_tokens"] >= 1
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert isinstance(entry["latency_ms"], int) and entry["latency_ms"] >= 0
        assert isinstance(entry["ttft_ms"], int) and 0 <= entry["ttft_ms"] <= entry["latency_ms"]
        assert entry["tokens_per_second"] > 0
    assert body["totals"]["succeeded"] == 2
    records = dict(UsageRecord.objects.values_list("request_id", "endpoint"))
    assert records == {"cmp-1-0": "completions", "cmp-1-1": "completions"}


def test_an_unknown_model_gets_a_404_entry_beside_the_answer(client):
    r = compare(
        client,
        models=[MODEL, "no-such-model"],
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=2,
    )
    assert r.status_code == 200, r.content
    answered, missing = r.json()["data"]
    assert answered["status_code"] == 200
    assert isinstance(answered["text"], str)
    assert missing["status_code"] == 404
    assert missing["model"] == "no-such-model"
    assert missing["error"]["code"] == "model_not_found"
    assert missing["error"]["param"] == "model"
    assert "text" not in missing
    totals = r.json()["totals"]
    assert (totals["succeeded"], totals["failed"]) == (1, 1)
    statuses = dict(UsageRecord.objects.values_list("request_id", "status"))
    assert statuses == {"cmp-1-0": "ok", "cmp-1-1": "error"}
    assert UsageRecord.objects.get(request_id="cmp-1-0").endpoint == "chat.completions"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"models": [MODEL, "auto"]}, "messages"),
        (
            {
                "models": [MODEL, "auto"],
                "prompt": "a",
                "messages": [{"role": "user", "content": "b"}],
            },
            "prompt",
        ),
        ({"models": [MODEL], "prompt": "a"}, "models"),
        ({"models": [MODEL, MODEL], "prompt": "a"}, "models"),
        ({"models": [MODEL, "auto"], "prompt": "a", "n": 2}, "n"),
        ({"models": [MODEL, "auto"], "prompt": "a", "stream": True}, "stream"),
        ({"models": [MODEL, "auto"], "prompt": "a", "temperature": 5}, "temperature"),
    ],
)
def test_an_invalid_compare_is_one_400(client, body, param):
    r = client.post(URL, body, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["param"] == param
    assert UsageRecord.objects.count() == 1  # the refused request, no model run


def test_compare_without_a_key_is_401(anon_client):
    r = anon_client.post(URL, {"models": [MODEL, "auto"], "prompt": "a"}, format="json")
    assert r.status_code == 401
    assert not UsageRecord.objects.exists()


def test_compare_is_in_the_schema(client):
    assert b"/v1/compare:" in client.get("/api/schema/").content
