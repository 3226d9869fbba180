"""Prompt cost is bounded before tokenizing, and refused prompts count against RPM."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db

MODEL = "gemma-3-270m"


def post(client, path: str, **body):
    return client.post(path, json.dumps({"model": MODEL, **body}), content_type="application/json")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "word " * 30}, "prompt"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "w" * 200}]},
            "messages",
        ),
        ("/v1/embeddings", {"input": ["word " * 30]}, "input"),
    ],
)
def test_a_prompt_over_the_character_bound_is_refused_naming_its_param(
    client, settings, path, body, param
):
    settings.LLMSITE_MAX_PROMPT_CHARS = 100
    r = post(client, path, **body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", param)


def test_embeddings_are_capped_in_tokens_per_request(client, settings):
    settings.LLMSITE_EMBEDDINGS_MAX_TOKENS = 4
    r = post(client, "/v1/embeddings", input=["one two three", "four five six"])
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "input")
    assert post(client, "/v1/embeddings", input="hi").status_code == 200


def test_a_prompt_too_long_for_the_context_counts_against_rpm(client, fresh_minute):
    call_command("set_quota", "--tenant", "acme", "--rpm", "1", stdout=StringIO())
    r = post(client, "/v1/completions", prompt="Hi", max_tokens=10**6)
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert post(client, "/v1/completions", prompt="Hi", max_tokens=1).status_code == 429
