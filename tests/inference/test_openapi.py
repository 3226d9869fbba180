"""The OpenAPI schema describes what the /v1 endpoints answer, and the answers fit it."""

from __future__ import annotations

import json

import jsonschema
import pytest
from django.test import Client

from tests.helpers import sse_chunks, sse_events

pytestmark = pytest.mark.django_db

V1_POSTS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/batch",
    "/v1/compare",
    "/v1/analyze",
    "/v1/responses",
]


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def component(schema: dict, ref_holder: dict) -> dict:
    ref = ref_holder["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def response_schema(schema: dict, path: str, status: int, media: str = "application/json"):
    responses = next(iter(schema["paths"][path].values()))["responses"]
    return responses[str(status)]["content"][media]["schema"]


def property_component(schema: dict, parent: dict, name: str) -> dict:
    """The component a property refers to, through an array or a nullable wrapper."""
    prop = parent["properties"][name]
    if prop.get("type") == "array":
        prop = prop["items"]
    if "allOf" in prop:
        (prop,) = prop["allOf"]
    return component(schema, prop)


def as_json_schema(node):
    """OpenAPI 3.0 (nullable, open objects) to JSON Schema, closing every object:
    a field an answer carries that its schema does not name fails validation."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out and "enum" not in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def assert_fits(schema: dict, name: str, instance) -> None:
    document = {
        "$ref": f"#/components/schemas/{name}",
        "components": as_json_schema(schema["components"]),
    }
    jsonschema.Draft7Validator(document).validate(instance)


def test_chat_completion_response_describes_choices_message_and_usage(schema):
    body = component(schema, response_schema(schema, "/v1/chat/completions", 200))
    assert {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"} <= set(
        body["required"]
    )
    choice = property_component(schema, body, "choices")
    assert {"index", "message", "logprobs", "finish_reason"} <= set(choice["properties"])
    message = property_component(schema, choice, "message")
    assert {"role", "content", "refusal", "tool_calls"} <= set(message["properties"])
    usage = property_component(schema, body, "usage")
    assert set(usage["properties"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_chat_completion_stream_is_documented_as_chunks_with_a_delta(schema):
    path = schema["paths"]["/v1/chat/completions"]["post"]
    stream = path["responses"]["200"]["content"]["text/event-stream"]
    assert stream["examples"], "the chunk has an example"
    chunk = component(schema, stream["schema"])
    assert component(schema, chunk["properties"]["object"])["enum"] == ["chat.completion.chunk"]
    choice = property_component(schema, chunk, "choices")
    delta = property_component(schema, choice, "delta")
    assert {"role", "content", "tool_calls"} <= set(delta["properties"])
    assert "usage" in chunk["properties"]
    assert "[DONE]" in path["responses"]["200"]["description"]


@pytest.mark.parametrize("path", V1_POSTS)
def test_400_and_401_answer_the_error_object(schema, path):
    for status in (400, 401):
        error = component(schema, response_schema(schema, path, status))
        detail = property_component(schema, error, "error")
        assert set(detail["required"]) == {"message", "type", "param", "code"}


def test_no_v1_answer_is_a_bare_object(schema):
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    assert "$ref" in content["schema"], (path, status, media)


def test_every_example_fits_its_schema(schema):
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            for response in operation["responses"].values():
                for content in response.get("content", {}).values():
                    name = content["schema"]["$ref"].rsplit("/", 1)[1]
                    for example in content.get("examples", {}).values():
                        assert_fits(schema, name, example["value"])


def test_real_chat_answers_fit_the_schema(schema, client, anon_client):
    chat = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    r = client.post("/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 2}, "json")
    assert r.status_code == 200, r.content
    assert_fits(schema, "ChatCompletion", r.json())

    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/v1/chat/completions", stream, "json")
    chunks = sse_chunks(sse_events(r))
    assert chunks[-1]["usage"] is not None
    for chunk in chunks:
        assert_fits(schema, "ChatCompletionChunk", chunk)

    r = client.post("/v1/chat/completions", {**chat, "max_tokens": 0}, "json")
    assert r.status_code == 400
    assert_fits(schema, "ErrorResponse", r.json())
    r = anon_client.post("/v1/chat/completions", chat, "json")
    assert r.status_code == 401
    assert_fits(schema, "ErrorResponse", r.json())


def test_real_completion_embedding_and_model_answers_fit_the_schema(schema, client):
    completion = {"model": "gemma-3-270m", "prompt": "Paris is", "max_tokens": 3, "temperature": 0}
    r = client.post("/v1/completions", {**completion, "logprobs": 2}, "json")
    assert r.status_code == 200, r.content
    assert_fits(schema, "Completion", r.json())
    r = client.post("/v1/completions", {**completion, "stream": True}, "json")
    for chunk in sse_chunks(sse_events(r)):
        assert_fits(schema, "CompletionChunk", chunk)

    for encoding in ("float", "base64"):
        body = {"model": "gemma-3-270m", "input": ["a", "b"], "encoding_format": encoding}
        r = client.post("/v1/embeddings", body, "json")
        assert r.status_code == 200, r.content
        assert_fits(schema, "CreateEmbeddingResponse", r.json())

    assert_fits(schema, "ListModelsResponse", client.get("/v1/models").json())
    assert_fits(schema, "Model", client.get("/v1/models/gemma-3-270m").json())
    r = client.get("/v1/models/nope")
    assert r.status_code == 404
    assert_fits(schema, "ErrorResponse", r.json())


def test_real_batch_and_compare_answers_fit_the_schema(schema, client):
    chat = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}]}
    batch = {
        "requests": [
            {"custom_id": "a", "url": "/v1/chat/completions", "body": {**chat, "max_tokens": 2}},
            {"url": "/v1/embeddings", "body": {"model": "nope", "input": "x"}},
        ]
    }
    r = client.post("/v1/batch", batch, "json")
    assert r.status_code == 200, r.content
    assert [entry["status_code"] for entry in r.json()["data"]] == [200, 404]
    assert_fits(schema, "BatchResult", r.json())

    compare = {"models": ["gemma-3-270m", "nope"], "prompt": "Paris is", "max_tokens": 2}
    r = client.post("/v1/compare", compare, "json")
    assert r.status_code == 200, r.content
    assert [entry["status_code"] for entry in r.json()["data"]] == [200, 404]
    assert_fits(schema, "CompareResult", r.json())
