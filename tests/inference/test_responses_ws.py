"""/v1/responses over the WebSocket protocol (`response.create`), through Channels'
communicator against the real model."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.services import api_key_issue, tenant_get_or_create
from billing.models import UsageRecord
from inference.models import LLMModel, StoredResponse
from llmsite.asgi import application
from tests.conftest import QWEN

pytestmark = [pytest.mark.django_db(transaction=True)]

BODY = {"model": QWEN, "input": "Say hi", "max_output_tokens": 6, "temperature": 0}


@pytest.fixture(autouse=True)
async def _close_worker_connections():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def ws_key(db):
    LLMModel.objects.get_or_create(
        model_id=QWEN,
        defaults={
            "path": "bundled:qwen2.5-coder-0.5b-instruct-q4-k-m",
            "n_ctx": 4096,
            "chat_format": "auto",
            "capabilities": ["chat", "completion", "json", "tools"],
        },
    )
    return api_key_issue(tenant=tenant_get_or_create(slug="wsresp"), name="ws")[1]


async def authed(key) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, "/v1/realtime/chat")
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_json_to({"type": "auth", "token": key})
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    return comm


async def test_a_response_streams_its_events_over_the_socket_and_is_stored(ws_key):
    comm = await authed(ws_key)
    await comm.send_json_to({"type": "response.create", "request_id": "r1", "body": BODY})
    events = []
    while not events or events[-1]["type"] not in (
        "response.completed",
        "response.incomplete",
        "response.failed",
    ):
        msg = await comm.receive_json_from(timeout=120)
        assert msg["type"] == "response.event" and msg["request_id"] == "r1", msg
        events.append(msg["event"])
    await comm.disconnect()
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert text and final["output"][0]["content"][0]["text"] == text
    assert await sync_to_async(StoredResponse.objects.filter(response_id=final["id"]).exists)()
    rows = await sync_to_async(list)(UsageRecord.objects.values_list("endpoint", "status"))
    assert rows == [("responses", "ok")]


async def test_a_refused_response_is_an_error_message_naming_the_field(ws_key):
    comm = await authed(ws_key)
    body = {**BODY, "background": True}
    await comm.send_json_to({"type": "response.create", "request_id": "r2", "body": body})
    msg = await comm.receive_json_from(timeout=30)
    await comm.disconnect()
    assert msg["type"] == "error" and msg["request_id"] == "r2"
    assert msg["error"]["param"] == "background"
    rows = await sync_to_async(list)(UsageRecord.objects.values_list("endpoint", "status"))
    assert rows == [("responses", "error")]
