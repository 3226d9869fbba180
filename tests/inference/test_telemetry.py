"""Prometheus metrics, live figures and the operators' stats of inference."""

from __future__ import annotations

import ipaddress
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from inference.registry import registry
from inference.telemetry import live
from tests.helpers import read_stream

pytestmark = pytest.mark.django_db

MODEL = "gemma-3-270m"
TOKEN = "metrics-token-0123456789"


def scrape(**extra) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    r = Client().get("/metrics", **extra)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def loaded(gemma):
    engine = registry.engine_for(gemma)
    engine.wait_ready(60)
    return engine


@pytest.fixture(autouse=True)
def _clean_live():
    yield
    live.reset()


def test_metrics_parse_and_counters_move_with_traffic(client, loaded):
    before = scrape()
    r = client.post(
        "/v1/completions",
        {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0},
        format="json",
    )
    assert r.status_code == 200
    usage = r.json()["usage"]
    stream = client.post(
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        format="json",
    )
    assert stream.status_code == 200
    read_stream(stream)
    after = scrape()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        moved("llmsite_inference_requests_total", endpoint="completions", model=MODEL, status="ok")
        == 1
    )
    assert (
        moved(
            "llmsite_inference_requests_total",
            endpoint="chat.completions",
            model=MODEL,
            status="ok",
        )
        == 1
    )
    assert moved("llmsite_prompt_tokens_total", model=MODEL) >= usage["prompt_tokens"] + 1
    assert moved("llmsite_completion_tokens_total", model=MODEL) >= usage["completion_tokens"] + 1
    assert moved("llmsite_time_to_first_token_seconds_count", model=MODEL) == 2
    assert moved("llmsite_inference_duration_seconds_count", model=MODEL) == 2
    assert moved("llmsite_inference_duration_seconds_bucket", model=MODEL, le="+Inf") == 2
    # The HTTP counter labels the route pattern and the model the router says answered.
    http = {"route": "v1/completions", "status": "200", "model": MODEL}
    assert moved("llmsite_http_requests_total", **http) == 1
    assert moved("llmsite_http_request_duration_seconds_count", route="v1/completions") == 1
    assert moved("llmsite_http_requests_total", route="metrics", status="200", model="") == 1
    # Gauges read at scrape time.
    assert value(after, "llmsite_models_loaded") >= 1
    assert ("llmsite_engine_queue_depth", (("model", MODEL),)) in after
    assert value(after, "llmsite_engine_in_flight", model=MODEL) == 0
    assert value(after, "llmsite_start_time_seconds") > 0
    assert "process_cpu_seconds_total" in names(after)


def test_an_alias_is_counted_under_the_model_that_answered(client, loaded):
    call_command("add_alias", "fast", "--models", MODEL, stdout=StringIO())
    before = scrape()
    r = client.post(
        "/v1/completions", {"model": "fast", "prompt": "Hi", "max_tokens": 1}, format="json"
    )
    assert r.status_code == 200 and r["x-llmsite-model"] == MODEL
    after = scrape()
    ok = {"endpoint": "completions", "model": MODEL, "status": "ok"}
    http = {"route": "v1/completions", "status": "200", "model": MODEL}
    for name, labels in [
        ("llmsite_inference_requests_total", ok),
        ("llmsite_http_requests_total", http),
    ]:
        assert value(after, name, **labels) - value(before, name, **labels) == 1
    assert not any("fast" in str(labels) for _, labels in after)


def test_client_chosen_model_names_never_become_labels(client):
    before = scrape()
    r = client.post("/v1/completions", {"model": "no-such-model-xyz", "prompt": "x"}, format="json")
    assert r.status_code == 404
    assert client.get("/v1/models/also-not-a-model").status_code == 404
    after = scrape()
    assert not any("no-such-model-xyz" in str(key) for key in after)
    assert not any("also-not-a-model" in str(key) for key in after)
    errors = {"endpoint": "completions", "model": "", "status": "error"}
    assert (
        value(after, "llmsite_inference_requests_total", **errors)
        - value(before, "llmsite_inference_requests_total", **errors)
        == 1
    )
    # One route label for every model id in the path.
    route = {"route": "v1/models/<path:model_id>", "status": "404", "model": ""}
    assert value(after, "llmsite_http_requests_total", **route) >= 1


def test_quota_refusals_are_counted_by_code(client, tenant, loaded, fresh_minute):
    before = scrape()
    call_command("set_quota", "--tenant", "acme", "--tokens-per-day", "10", stdout=StringIO())
    r = client.post(
        "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 50}, format="json"
    )
    assert r.status_code == 429
    call_command(
        "set_quota", "--tenant", "acme", "--tokens-per-day", "0", "--rpm", "1", stdout=StringIO()
    )
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models").status_code == 429
    after = scrape()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("llmsite_quota_refusals_total", code="insufficient_quota") == 1
    assert moved("llmsite_quota_refusals_total", code="rate_limit_exceeded") == 1
    rejected = {"endpoint": "completions", "model": MODEL, "status": "rejected"}
    assert moved("llmsite_inference_requests_total", **rejected) == 1
    # Refused before inference: no tokens counted.
    assert moved("llmsite_prompt_tokens_total", model=MODEL) == 0


def test_live_figures_are_exported_at_scrape_time(gemma):
    live.set(MODEL, ttft_ms=120.0, tokens_per_s=55.5, in_flight=3)
    live.set("remote-model", in_flight=1)
    samples = scrape()
    assert value(samples, "llmsite_model_ttft_seconds_avg", model=MODEL) == pytest.approx(0.12)
    assert value(samples, "llmsite_model_tokens_per_second_avg", model=MODEL) == 55.5
    assert value(samples, "llmsite_model_in_flight", model=MODEL) == 3
    assert value(samples, "llmsite_model_in_flight", model="remote-model") == 1


def test_engine_stats_are_exported_when_the_engine_has_them(loaded, monkeypatch):
    monkeypatch.setattr(
        loaded,
        "stats",
        lambda: {"prefix_cache_hits": 7, "prefix-cache misses": 2, "warm": True, "name": "x"},
        raising=False,
    )
    samples = scrape()
    assert value(samples, "llmsite_engine_prefix_cache_hits", model=MODEL) == 7
    assert value(samples, "llmsite_engine_prefix_cache_misses", model=MODEL) == 2
    assert value(samples, "llmsite_engine_warm", model=MODEL) == 1
    assert "llmsite_engine_name" not in names(samples)


def test_a_failing_engine_stats_does_not_break_the_scrape(loaded, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(loaded, "stats", broken, raising=False)
    assert "llmsite_engine_queue_depth" in names(scrape())


# -- protection -------------------------------------------------------------------
def test_loopback_may_scrape_by_default():
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="::1").status_code == 200
    # IPv4 peers of a dual-stack listener.
    assert Client().get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200


def test_other_addresses_get_403_in_error_shape():
    r = Client().get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert r.status_code == 403
    assert r["Content-Type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "permission_denied" and err["type"] == "invalid_request_error"
    assert b"llmsite_" not in r.content


def test_a_prometheus_accept_header_still_gets_json_errors():
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    r = Client().get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_ACCEPT=accept)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


def test_the_token_opens_metrics_from_anywhere(settings):
    settings.LLMSITE_METRICS_TOKEN = TOKEN
    r = Client().get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert r.status_code == 200 and b"llmsite_models_loaded" in r.content


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}"]
)
def test_a_wrong_token_is_401_even_from_loopback(settings, header):
    settings.LLMSITE_METRICS_TOKEN = TOKEN
    for addr in ("10.1.2.3", "127.0.0.1"):
        r = Client().get("/metrics", REMOTE_ADDR=addr, HTTP_AUTHORIZATION=header)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_token"
        assert r["WWW-Authenticate"].startswith("Bearer")


def test_without_a_configured_token_a_bearer_header_opens_nothing(settings):
    settings.LLMSITE_METRICS_TOKEN = ""
    r = Client().get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer anything")
    assert r.status_code == 403


def test_the_allow_list_takes_networks(settings):
    settings.LLMSITE_METRICS_ALLOW_IPS = [ipaddress.ip_network("10.0.0.0/8")]
    assert Client().get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    settings.LLMSITE_METRICS_ALLOW_IPS = []
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_metrics_and_operator_endpoints_are_in_the_schema():
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in (
        "/metrics",
        "/api/admin/stats",
        "/api/admin/models/{model_id}/load",
        "/api/admin/models/{model_id}/unload",
        "/api/admin/models/{model_id}/reload",
    ):
        operations = schema["paths"][path]
        assert all(op["tags"] == ["Operators"] for op in operations.values()), path
