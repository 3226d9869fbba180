"""Every adapter leaves exactly one usage record through the service: for a
success, an error, a rejection and a cancellation."""

from __future__ import annotations

import asyncio
import json
import uuid
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import call_command

from accounts.authentication import principal_from_token
from billing.models import UsageRecord
from inference import extras, services
from inference.backends.local import local_engine
from inference.services import Completed, Streamed
from llmsite.asgi import application
from llmsite.errors import APIError
from tests.helpers import no_eos, read_stream

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "gemma-3-270m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture
async def long_story(gemma) -> dict:
    """A chat request still generating when a test cancels it half a second in.

    Sampled at the default temperature, Gemma may end its turn early; a logit_bias
    against its end tokens keeps it going to max_tokens.
    """
    bias = no_eos(await local_engine(gemma))
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 2000,
        "logit_bias": {str(token): value for token, value in bias.items()},
    }


@pytest.fixture(autouse=True)
async def _close_worker_connections():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


def records(request_id: str) -> list[tuple[str, str]]:
    rows = UsageRecord.objects.filter(request_id__startswith=request_id)
    return [(r.status, r.error_code) for r in rows]


def rid() -> str:
    return f"rec-{uuid.uuid4().hex[:12]}"


def rpm(limit: int = 1) -> None:
    call_command("set_quota", "--tenant", "acme", "--rpm", str(limit), stdout=StringIO())


def post(client, path: str, body, request_id: str, **extra):
    return client.post(
        path,
        json.dumps(body) if not isinstance(body, str) else body,
        content_type="application/json",
        HTTP_X_REQUEST_ID=request_id,
        **extra,
    )


# -- REST, whole answer ---------------------------------------------------------------
def test_rest_success_error_and_rejection_each_leave_one_record(client, fresh_minute):
    rpm()
    ok, bad, unparseable, refused = rid(), rid(), rid(), rid()
    assert post(client, "/v1/chat/completions", CHAT, ok).status_code == 200
    assert post(client, "/v1/chat/completions", {**CHAT, "n": 0}, bad).status_code == 400
    assert post(client, "/v1/chat/completions", "{", unparseable).status_code == 400
    r = post(client, "/v1/chat/completions", CHAT, refused)
    assert r.status_code == 429
    assert records(ok) == [("ok", "")]
    assert records(bad) == [("error", "invalid_value")]
    assert records(unparseable) == [("error", "invalid_json")]
    assert records(refused) == [("rejected", "rate_limit_exceeded")]


async def test_a_cancelled_request_leaves_one_cancelled_record(api_key, gemma, long_story):
    principal = await sync_to_async(principal_from_token)(api_key)
    request_id = rid()
    task = asyncio.create_task(
        services.chat_completion_create(principal=principal, body=long_story, request_id=request_id)
    )
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await sync_to_async(records)(request_id) == [("cancelled", "")]


# -- SSE ---------------------------------------------------------------------------------
def test_sse_success_and_error_leave_one_record(client):
    ok, bad = rid(), rid()
    body = read_stream(post(client, "/v1/chat/completions", {**CHAT, "stream": True}, ok))
    assert body.endswith("data: [DONE]\n\n")
    r = post(client, "/v1/chat/completions", {**CHAT, "stream": True, "n": 0}, bad)
    assert r.status_code == 400
    assert records(ok) == [("ok", "")]
    assert records(bad) == [("error", "invalid_value")]


def test_sse_rejection_leaves_one_record(client, fresh_minute):
    rpm()
    first, refused = rid(), rid()
    read_stream(post(client, "/v1/chat/completions", {**CHAT, "stream": True}, first))
    assert (
        post(client, "/v1/chat/completions", {**CHAT, "stream": True}, refused).status_code == 429
    )
    assert records(refused) == [("rejected", "rate_limit_exceeded")]


async def test_a_stream_closed_before_it_was_read_ends_and_leaves_one_record(
    api_key, gemma, long_story
):
    principal = await sync_to_async(principal_from_token)(api_key)
    request_id = rid()
    result = await services.chat_completion_create(
        principal=principal, body={**long_story, "stream": True}, request_id=request_id
    )
    assert isinstance(result, Streamed)
    assert result.headers["x-llmsite-model"] == MODEL
    # A response closed by a client that left before the body was iterated.
    await sync_to_async(result.close_soon, thread_sensitive=False)()
    for _ in range(200):
        if await sync_to_async(records)(request_id):
            break
        await asyncio.sleep(0.05)
    assert await sync_to_async(records)(request_id) == [("cancelled", "")]
    assert [item async for item in result.events] == []
    await result.aclose()
    assert await sync_to_async(records)(request_id) == [("cancelled", "")]


async def test_a_stream_closed_midway_leaves_one_cancelled_record(api_key, gemma, long_story):
    principal = await sync_to_async(principal_from_token)(api_key)
    request_id = rid()
    result = await services.chat_completion_create(
        principal=principal, body={**long_story, "stream": True}, request_id=request_id
    )
    first = await anext(aiter(result.events))
    assert first["object"] == "chat.completion.chunk"
    await result.aclose()
    assert await sync_to_async(records)(request_id) == [("cancelled", "")]


# -- WebSocket ----------------------------------------------------------------------------
async def ws(api_key):
    comm = WebsocketCommunicator(application, "/v1/realtime/chat")
    assert (await comm.connect(timeout=10))[0]
    await comm.send_json_to({"type": "auth", "token": api_key})
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    return comm


async def until(comm, kind: str) -> dict:
    while True:
        msg = await comm.receive_json_from(timeout=60)
        if msg["type"] in (kind, "error"):
            return msg


async def ws_records(since: set[int]) -> list[tuple[str, str]]:
    def read():
        rows = UsageRecord.objects.filter(request_id__startswith="ws_").exclude(pk__in=since)
        return [(r.status, r.error_code) for r in rows]

    return await sync_to_async(read)()


async def ws_seen() -> set[int]:
    return set(
        await sync_to_async(list)(
            UsageRecord.objects.filter(request_id__startswith="ws_").values_list("pk", flat=True)
        )
    )


async def test_websocket_success_error_rejection_and_cancel_each_leave_one_record(
    api_key, gemma, fresh_minute, long_story
):
    await sync_to_async(rpm)(2)
    comm = await ws(api_key)
    seen = await ws_seen()
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "a", "body": CHAT})
    assert (await until(comm, "chat.completion.done"))["type"] == "chat.completion.done"
    assert await ws_records(seen) == [("ok", "")]

    seen = await ws_seen()
    body = {**CHAT, "n": 0}
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "b", "body": body})
    assert (await until(comm, "chat.completion.done"))["type"] == "error"
    assert await ws_records(seen) == [("error", "invalid_value")]

    seen = await ws_seen()
    await comm.send_json_to(
        {"type": "chat.completion.create", "request_id": "c", "body": long_story}
    )
    assert (await until(comm, "chat.completion.chunk"))["type"] == "chat.completion.chunk"
    await comm.send_json_to({"type": "cancel", "request_id": "c"})
    done = await until(comm, "chat.completion.done")
    assert done["finish_reason"] == "cancelled"
    assert await ws_records(seen) == [("cancelled", "")]

    seen = await ws_seen()
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "d", "body": CHAT})
    assert (await until(comm, "chat.completion.done"))["error"]["code"] == "rate_limit_exceeded"
    assert await ws_records(seen) == [("rejected", "rate_limit_exceeded")]
    await comm.disconnect()


# -- batch items ------------------------------------------------------------------------
def test_batch_items_leave_one_record_each(client, fresh_minute):
    rpm()
    request_id = rid()
    items = [
        {"url": "/v1/chat/completions", "body": CHAT},
        {"url": "/v1/chat/completions", "body": {**CHAT, "n": 0}},
    ]
    r = client.post("/v1/batch", {"requests": items}, format="json", HTTP_X_REQUEST_ID=request_id)
    assert r.status_code == 200
    assert records(f"{request_id}-0") == [("ok", "")]
    assert records(f"{request_id}-1") == [("error", "invalid_value")]
    refused = rid()
    r = client.post("/v1/batch", {"requests": items[:1]}, format="json", HTTP_X_REQUEST_ID=refused)
    assert r.json()["data"][0]["status_code"] == 429
    assert records(refused) == [("rejected", "rate_limit_exceeded")]


async def test_a_cancelled_batch_leaves_one_cancelled_record_per_started_item(
    api_key, gemma, long_story
):
    principal = await sync_to_async(principal_from_token)(api_key)
    request_id = rid()
    body = {"requests": [{"url": "/v1/chat/completions", "body": long_story}], "concurrency": 1}
    task = asyncio.create_task(
        extras.batch_run(principal=principal, body=body, request_id=request_id)
    )
    await asyncio.sleep(0.5)
    task.cancel()
    try:
        ended = await task
    except asyncio.CancelledError:
        pass
    else:  # say what the item did instead: an error entry, or an answer that ended early
        pytest.fail(f"the batch ended before it was cancelled: {ended.body['data']}")
    assert await sync_to_async(records)(request_id) == [("cancelled", "")]


async def test_the_service_returns_typed_results_and_raises_typed_errors(api_key, gemma):
    principal = await sync_to_async(principal_from_token)(api_key)
    result = await services.embedding_create(
        principal=principal, body={"model": MODEL, "input": "hi"}, request_id=rid()
    )
    assert isinstance(result, Completed) and result.body["object"] == "list"
    assert "x-ratelimit-limit-requests" in result.headers or result.headers["x-llmsite-model"]
    with pytest.raises(APIError) as caught:
        await services.completion_create(
            principal=principal, body={"model": "nope", "prompt": "x"}, request_id=rid()
        )
    assert caught.value.status == 404
