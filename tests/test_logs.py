"""Nothing a request sends, and no key, token, password or remote key, reaches the logs.

One run of representative requests (API key and JWT, chat whole and streamed, a
bad key, a wrong password, a remote model with its own upstream key, a batch, a
WebSocket chat, key issue and rotate) with every logger at DEBUG, then a scan of
every record: its message, its arguments, its exception text and its extra
attributes, as a handler with any formatter could print them.
"""

from __future__ import annotations

import json
import logging

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.services import api_key_issue, hash_key, member_add, tenant_get_or_create
from inference.models import LLMModel
from llmsite.asgi import application
from tests.helpers import read_stream
from tests.inference.fake_openai import FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "Sekrit-passphrase-LOGCHECK-7731"
REMOTE_KEY = "sk-upstream-REMOTEKEY-5f3e9a1c77d2b4"
# Prompts that look like secrets, and sentences no log line has a reason to hold.
PROMPT = "My card is 4111-1111-1111-1111 and the vault code is PROMPTLEAK-93af"
PROMPT_STREAM = "Streamed question about the lighthouse PROMPTLEAK-stream-4c1d"
PROMPT_REMOTE = "Remote question about the harbour PROMPTLEAK-remote-88e2"
PROMPT_WS = "Socket question about the tides PROMPTLEAK-ws-61b0"
PROMPT_BATCH = "Batched question about the moon PROMPTLEAK-batch-2a7f"
EMBED_TEXT = "Embedded sentence PROMPTLEAK-embed-0d4e"
BAD_KEY = "sk-llm-deadbeefcafe_BADKEYLEAK0123456789abcdef"
LOGGERS = ("", "llmsite", "inference", "accounts", "billing", "django", "daphne", "httpx")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        out = []
        for record in self.records:
            extra = {
                k: v
                for k, v in vars(record).items()
                if k not in logging.LogRecord("", 0, "", 0, "", (), None).__dict__
            }
            out.append(
                "\n".join(
                    [
                        formatter.format(record),
                        repr(record.args),
                        repr(extra),
                        getattr(record, "exc_text", None) or "",
                    ]
                )
            )
        return out


@pytest.fixture
def captured():
    handler = Capture()
    saved = {}
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved[name] = (log.level, log.disabled)
        log.setLevel(logging.DEBUG)
        log.disabled = False
    # django.request is configured at ERROR; the point is to see what DEBUG would print.
    for name in ("django.request", "django.server", "django.channels.server"):
        log = logging.getLogger(name)
        saved[name] = (log.level, log.disabled)
        log.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for name, (level, disabled) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).disabled = disabled


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def assert_clean(handler: Capture, secrets: dict[str, str]) -> None:
    texts = handler.texts()
    assert texts, "nothing was logged: the capture is not wired"
    leaks = [
        (what, text.splitlines()[0])
        for text in texts
        for what, secret in secrets.items()
        if secret in text
    ]
    assert not leaks, leaks


def test_a_representative_run_logs_no_secret_and_no_prompt(captured, gemma, fake):
    tenant = tenant_get_or_create(slug="logs", name="Logs")
    _, raw_key = api_key_issue(tenant=tenant, name="main", scopes=["inference", "keys:manage"])
    user = get_user_model().objects.create_user(username="logan", password=PASSWORD)
    member_add(tenant=tenant, user=user, role=Role.OWNER)
    far = LLMModel.objects.create(
        model_id="far-logs",
        backend="openai",
        base_url=fake.base_url,
        path="",
        remote_model="up-m",
        remote_api_key=REMOTE_KEY,
        capabilities=["chat", "completion", "embeddings"],
    )

    key = APIClient()
    key.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    chat = {"model": gemma.model_id, "max_tokens": 4, "temperature": 0}

    r = key.post(
        "/v1/chat/completions",
        {**chat, "messages": [{"role": "user", "content": PROMPT}]},
        format="json",
    )
    assert r.status_code == 200, r.content
    r = key.post(
        "/v1/chat/completions",
        {**chat, "stream": True, "messages": [{"role": "user", "content": PROMPT_STREAM}]},
        format="json",
    )
    assert r.status_code == 200
    read_stream(r)
    r = key.post("/v1/embeddings", {"model": gemma.model_id, "input": EMBED_TEXT}, format="json")
    assert r.status_code == 200, r.content
    r = key.post(
        "/v1/chat/completions",
        {"model": far.model_id, "messages": [{"role": "user", "content": PROMPT_REMOTE}]},
        format="json",
    )
    assert r.status_code == 200, r.content
    assert fake.bodies, "the remote model was not called"
    r = key.post(
        "/v1/batch",
        {
            "requests": [
                {
                    "url": "/v1/chat/completions",
                    "body": {**chat, "messages": [{"role": "user", "content": PROMPT_BATCH}]},
                }
            ]
        },
        format="json",
    )
    assert r.status_code == 200, r.content
    # A request the engine refuses late still names no prompt in the log.
    r = key.post(
        "/v1/chat/completions",
        {**chat, "max_tokens": 10**6, "messages": [{"role": "user", "content": PROMPT}]},
        format="json",
    )
    assert r.status_code == 400

    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION=f"Bearer {BAD_KEY}")
    assert bad.get("/v1/models").status_code == 401

    wrong = APIClient().post(
        "/api/auth/token/", {"username": "logan", "password": PASSWORD + "x"}, format="json"
    )
    assert wrong.status_code == 401
    tokens = APIClient().post(
        "/api/auth/token/", {"username": "logan", "password": PASSWORD}, format="json"
    )
    assert tokens.status_code == 200
    access, refresh = tokens.json()["access"], tokens.json()["refresh"]
    jwt = APIClient()
    jwt.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    r = jwt.post(
        "/v1/chat/completions",
        {**chat, "messages": [{"role": "user", "content": PROMPT}]},
        format="json",
    )
    assert r.status_code == 200, r.content
    refreshed = APIClient().post("/api/auth/token/refresh/", {"refresh": refresh}, format="json")
    assert refreshed.status_code == 200

    issued = key.post("/api/tenants/logs/keys/", {"name": "minted"}, format="json")
    assert issued.status_code == 201, issued.content
    minted = issued.json()["key"]
    rotated = jwt.post(f"/api/tenants/logs/keys/{issued.json()['id']}/rotate/", {}, format="json")
    assert rotated.status_code in (200, 201), rotated.content
    new_key = rotated.json()["key"]

    secrets = {
        "api key": raw_key,
        "api key hash": hash_key(raw_key),
        "api key secret part": raw_key.split("_", 1)[-1],
        "bad key": BAD_KEY,
        "bad key hash": hash_key(BAD_KEY),
        "minted key": minted,
        "rotated key": new_key,
        "password": PASSWORD,
        "access token": access,
        "refresh token": refresh,
        "refreshed token": refreshed.json()["access"],
        "remote key": REMOTE_KEY,
        "prompt": "PROMPTLEAK",
        "card number": "4111-1111",
        "embedded text": EMBED_TEXT,
    }
    assert_clean(captured, secrets)


async def test_a_websocket_chat_logs_no_key_and_no_prompt(captured, gemma):
    tenant = await sync_to_async(tenant_get_or_create)(slug="wslogs")
    _, raw_key = await sync_to_async(api_key_issue)(tenant=tenant, name="ws")
    comm = WebsocketCommunicator(application, "/v1/realtime/chat")
    connected, _ = await comm.connect(timeout=10)
    assert connected
    await comm.send_json_to({"type": "auth", "token": raw_key})
    assert (await comm.receive_json_from(timeout=10))["type"] == "auth.ok"
    body = {
        "model": gemma.model_id,
        "messages": [{"role": "user", "content": PROMPT_WS}],
        "max_tokens": 4,
        "temperature": 0,
    }
    await comm.send_json_to({"type": "chat.completion.create", "request_id": "r1", "body": body})
    while (await comm.receive_json_from(timeout=120))["type"] != "chat.completion.done":
        pass
    await comm.send_to(text_data=json.dumps({"type": "auth", "token": BAD_KEY}))
    await comm.disconnect()

    bad = WebsocketCommunicator(application, "/v1/realtime/chat")
    await bad.connect(timeout=10)
    await bad.send_json_to({"type": "auth", "token": BAD_KEY})
    await bad.receive_json_from(timeout=10)
    await bad.disconnect()

    from django.db import connections

    await sync_to_async(connections.close_all)()
    assert_clean(
        captured,
        {
            "api key": raw_key,
            "api key hash": hash_key(raw_key),
            "bad key": BAD_KEY,
            "prompt": "PROMPTLEAK",
        },
    )
