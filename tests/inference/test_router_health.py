"""Only real backend faults count towards a model's cooldown (issue #16)."""

from __future__ import annotations

import json

import pytest

from inference.router import health
from tests.inference.fake_openai import FakeOpenAI

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_health():
    health.reset()
    yield
    health.reset()


def post(client, **body):
    body = {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 2, **body}
    return client.post("/v1/completions", json.dumps(body), content_type="application/json")


def test_an_overloaded_model_is_not_counted_as_failing(client, settings):
    settings.LLMSITE_MAX_QUEUE = 0
    r = post(client)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_overloaded"
    assert health.state("gemma-3-270m")["failures"] == 0


def test_invalid_and_too_long_requests_are_not_counted_as_failing(client):
    assert post(client, prompt=[10**9]).status_code == 400
    assert post(client, max_tokens=10**6).status_code == 400
    assert health.state("gemma-3-270m")["failures"] == 0


def test_an_upstream_5xx_is_counted_as_failing(client):
    from inference.models import LLMModel

    with FakeOpenAI() as fake:
        fake.status = 502
        LLMModel.objects.create(
            model_id="far", backend="openai", base_url=fake.base_url, path="", quality=1.0
        )
        assert post(client, model="far").status_code == 503
    assert health.state("far")["failures"] == 1
