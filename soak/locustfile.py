"""Mixed /v1 traffic for the soak: chat whole and streamed, completions, embeddings,
batch, and chat over the WebSocket.

Every request carries an `x-request-id` (the WebSocket's own `request_id`) under
the run's prefix, and is written to a ledger (one JSON line each) with its
outcome: `ok`, `refused` (a clean 429 or 503 in the error shape), `disconnected`
(a request the client dropped on purpose: a streamed chat at a random point, a
batch right after sending it, a WebSocket closed mid-generation) or `lost`
(anything else: a connection error, a 5xx, a broken stream, a body out of shape).
soak/check.py then matches the ledger against the usage records.

    SOAK_API_KEY=sk-llm-... SOAK_LEDGER=var/soak/ledger.jsonl SOAK_PREFIX=soak-x \
      .venv/bin/locust -f soak/locustfile.py --headless -u 10 -r 5 -t 60s -H http://127.0.0.1:8000
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import threading
import time
import uuid
from urllib.parse import urlsplit

import websocket
from locust import HttpUser, between, events, task

API_KEY = os.environ.get("SOAK_API_KEY", "")
PREFIX = os.environ.get("SOAK_PREFIX", "soak")
LEDGER = os.environ.get("SOAK_LEDGER", "var/soak/ledger.jsonl")
CHAT_MODEL = os.environ.get("SOAK_CHAT_MODEL", "qwen2.5-coder-0.5b-instruct")
BASE_MODEL = os.environ.get("SOAK_BASE_MODEL", "gemma-3-270m")
MAX_TOKENS = int(os.environ.get("SOAK_MAX_TOKENS", "8"))
# Stop sending new requests after this many (0: no cap); the run's duration still applies.
MAX_REQUESTS = int(os.environ.get("SOAK_MAX_REQUESTS", "0"))

# The codes of the API's 429s and 503s: what a WebSocket error event may cleanly say.
REFUSAL_CODES = {
    "rate_limit_exceeded",
    "insufficient_quota",
    "service_unavailable",
    "model_not_ready",
    "model_overloaded",
    "tenant_queue_full",
    "server_shutting_down",
    "backend_unavailable",
}

_lock = threading.Lock()
_ledger = None
_sent = 0
PROMPTS = [
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 2 + 2?",
    "Say hello in French.",
    "List two prime numbers.",
]


def _record(entry: dict) -> None:
    global _ledger
    with _lock:
        if _ledger is None:
            os.makedirs(os.path.dirname(LEDGER) or ".", exist_ok=True)
            _ledger = open(LEDGER, "a", buffering=1)  # noqa: SIM115 (closed at quit)
        _ledger.write(json.dumps(entry) + "\n")


def _take() -> bool:
    """Count one request against SOAK_MAX_REQUESTS; False once the cap is reached."""
    global _sent
    with _lock:
        if MAX_REQUESTS and _sent >= MAX_REQUESTS:
            return False
        _sent += 1
        return True


@events.quitting.add_listener
def _close(**_) -> None:
    with _lock:
        if _ledger is not None:
            _ledger.close()


def _clean_refusal(status: int, body: bytes) -> bool:
    if status not in (429, 503):
        return False
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


_think = between(0.5, 2)
RETRY_AFTER_CAP = 10.0  # seconds: a longer Retry-After (a daily quota) is not waited out


class PoliteUser(HttpUser):
    """A user that, like the official SDKs, waits out a refusal's Retry-After
    before its next request; otherwise it thinks for 0.5 to 2 s."""

    abstract = True
    _retry_after = 0.0

    def wait_time(self) -> float:
        wait, self._retry_after = max(_think(self), self._retry_after), 0.0
        return wait

    def retry_after(self, value) -> None:
        """Note a refusal's Retry-After (the header, or the WebSocket event's field)."""
        with contextlib.suppress(TypeError, ValueError):
            self._retry_after = min(float(value), RETRY_AFTER_CAP)


class ApiUser(PoliteUser):
    weight = 4

    def _id(self, kind: str) -> str:
        return f"{PREFIX}-{kind}-{uuid.uuid4().hex[:12]}"

    def _post(self, kind: str, path: str, body: dict, *, stream=False, records=None) -> None:
        if not _take():
            self.stop_if_capped()
            return
        rid = self._id(kind)
        entry = {"id": rid, "kind": kind, "records": records(rid) if records else [rid]}
        headers = {"Authorization": f"Bearer {API_KEY}", "x-request-id": rid}
        started = time.monotonic()
        try:
            with self.client.post(
                path, json=body, headers=headers, stream=stream, catch_response=True, name=kind
            ) as r:
                entry["status"] = r.status_code
                if r.status_code == 200:
                    if stream:
                        text = b"".join(r.iter_content(chunk_size=None)).decode()
                        ok = text.rstrip().endswith("data: [DONE]") and '"error"' not in text
                    else:
                        ok = bool(r.json())
                    entry["outcome"] = "ok" if ok else "lost"
                elif _clean_refusal(r.status_code, r.content):
                    entry["outcome"] = "refused"
                    self.retry_after(r.headers.get("Retry-After"))
                    r.success()
                else:
                    entry["outcome"] = "lost"
                    entry["body"] = r.text[:300]
                if entry["outcome"] == "lost":
                    r.failure(f"lost: {r.status_code}")
        except Exception as exc:  # the request is lost; the ledger says how
            entry.update(outcome="lost", error=repr(exc)[:300])
        entry["ms"] = round((time.monotonic() - started) * 1000)
        _record(entry)

    def stop_if_capped(self) -> None:
        time.sleep(1)

    def _chat(self, stream: bool) -> dict:
        return {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
        }

    @task(4)
    def chat(self) -> None:
        self._post("chat", "/v1/chat/completions", self._chat(False))

    @task(4)
    def chat_stream(self) -> None:
        body = {**self._chat(True), "stream_options": {"include_usage": True}}
        self._post("chatstream", "/v1/chat/completions", body, stream=True)

    @task(3)
    def completion(self) -> None:
        body = {"model": BASE_MODEL, "prompt": random.choice(PROMPTS), "max_tokens": MAX_TOKENS}
        self._post("completion", "/v1/completions", body)

    @task(3)
    def embeddings(self) -> None:
        body = {"model": BASE_MODEL, "input": random.sample(PROMPTS, 2)}
        self._post("embeddings", "/v1/embeddings", body)

    def _batch_items(self) -> list[dict]:
        return [
            {"custom_id": "c", "url": "/v1/chat/completions", "body": self._chat(False)},
            {
                "custom_id": "e",
                "url": "/v1/embeddings",
                "body": {"model": BASE_MODEL, "input": "x"},
            },
        ]

    @task(1)
    def batch(self) -> None:
        items = self._batch_items()
        # The envelope leaves no record; each item leaves one, `<x-request-id>-<index>`.
        self._post(
            "batch",
            "/v1/batch",
            {"requests": items, "concurrency": 2},
            records=lambda rid: [f"{rid}-{i}" for i in range(len(items))],
        )

    @task(1)
    def batch_dropped(self) -> None:
        """A batch whose client goes away as soon as it is sent: each item that
        started owes its record; if none had, the server counts the request as
        abandoned (llmsite_requests_abandoned_total)."""
        if not _take():
            self.stop_if_capped()
            return
        rid = self._id("batchdropped")
        items = self._batch_items()
        records = [f"{rid}-{i}" for i in range(len(items))]
        entry = {"id": rid, "kind": "batch", "records": records, "at": "sent"}
        body = json.dumps({"requests": items, "concurrency": 2})
        self._send_and_drop(entry, "/v1/batch", body)

    @task(2)
    def chat_stream_dropped(self) -> None:
        """A streamed chat whose client goes away at a random point: right after
        sending, after the headers, or after a few chunks. The ledger says
        `disconnected`; the server still owes it one usage record and must free
        its lease and engine slot."""
        if not _take():
            self.stop_if_capped()
            return
        rid = self._id("dropped")
        at = random.choice(["sent", "headers", "chunks"])
        entry = {"id": rid, "kind": "dropped", "records": [rid], "at": at}
        body = json.dumps({**self._chat(True), "max_tokens": max(MAX_TOKENS, 16)})
        self._send_and_drop(entry, "/v1/chat/completions", body)

    def _send_and_drop(self, entry: dict, path: str, body: str) -> None:
        """POST `body` on a bare socket and leave at `entry["at"]`: right after
        sending, after the headers, or after a few chunks."""
        rid = entry["id"]
        at = entry["at"]
        # A bare socket, so that "drop" is a real close, not a pooled connection kept.
        url = urlsplit(self.host)
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=120)
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "x-request-id": rid,
            "Content-Type": "application/json",
        }
        started = time.monotonic()
        error = None
        try:
            conn.request("POST", path, body=body, headers=headers)
            if at != "sent":
                r = conn.getresponse()
                entry["status"] = r.status
                if r.status != 200:
                    content = r.read()
                    at = entry["at"] = "refused"
                    entry["outcome"] = "refused" if _clean_refusal(r.status, content) else "lost"
                    self.retry_after(r.getheader("Retry-After"))
                elif at == "chunks":
                    entry["chunks"] = random.randint(1, 3)
                    for _ in range(entry["chunks"]):
                        if not r.read1(65536):
                            break
                r.close()
            entry.setdefault("outcome", "disconnected")
        except Exception as exc:  # the request is lost; the ledger says how
            entry.update(outcome="lost", error=repr(exc)[:300])
            error = exc
        finally:
            conn.close()
        elapsed = (time.monotonic() - started) * 1000
        entry["ms"] = round(elapsed)
        events.request.fire(
            request_type="POST",
            name=f"dropped-{at}",
            response_time=elapsed,
            response_length=0,
            exception=error or (RuntimeError(str(entry)) if entry["outcome"] == "lost" else None),
            context={},
        )
        _record(entry)


# daphne pings a WebSocket idle for 20 s (its --ping-interval) and drops it,
# with a TCP reset, when no pong comes within 30 s (--ping-timeout).
# websocket-client answers pings only inside recv(), and this user reads its
# socket only during its own chats: one that spent longer than that elsewhere
# (a dropped chat that waited 40 s for its first chunk, a Retry-After) would
# send its next chat on a socket the server has dropped, as keep-alive HTTP
# clients would on a pooled connection. Like them it opens a new one instead.
SOCKET_STALE_AFTER_S = 20


class SocketUser(PoliteUser):
    """One WebSocket per user, a chat at a time on it, reopened when it has not
    been read for longer than the server's keep-alive ping interval."""

    weight = 1

    def on_start(self) -> None:
        self.ws = None
        self.last_read = 0.0

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def _connect(self) -> websocket.WebSocket:
        url = self.host.replace("http", "ws", 1) + "/v1/realtime/chat"
        ws = websocket.create_connection(url, timeout=120)
        ws.send(json.dumps({"type": "auth", "token": API_KEY}))
        reply = json.loads(ws.recv())
        if reply.get("type") != "auth.ok":
            raise RuntimeError(f"auth refused: {reply}")
        return ws

    @task(3)
    def chat(self) -> None:
        if not _take():
            time.sleep(1)
            return
        rid = f"{PREFIX}-ws-{uuid.uuid4().hex[:12]}"
        entry = {"id": rid, "kind": "ws", "records": [rid]}
        started = time.monotonic()
        try:
            if self.ws is not None and time.monotonic() - self.last_read > SOCKET_STALE_AFTER_S:
                self.ws.close()
                self.ws = None
            if self.ws is None:
                self.ws = self._connect()
                self.last_read = time.monotonic()
            body = {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
                "max_tokens": MAX_TOKENS,
            }
            self.ws.send(
                json.dumps({"type": "chat.completion.create", "request_id": rid, "body": body})
            )
            while True:
                msg = json.loads(self.ws.recv())
                self.last_read = time.monotonic()
                if msg.get("request_id") != rid:
                    continue
                if msg["type"] == "chat.completion.done":
                    entry["outcome"] = "ok"
                    break
                if msg["type"] == "error":
                    code = (msg.get("error") or {}).get("code")
                    refused = code in REFUSAL_CODES
                    entry.update(outcome="refused" if refused else "lost", error=msg["error"])
                    self.retry_after(msg.get("retry_after"))
                    break
        except Exception as exc:
            entry.update(outcome="lost", error=repr(exc)[:300])
            if self.ws is not None:
                self.ws.close()
            self.ws = None
        self._fire(entry, started, "ws")

    def _fire(self, entry: dict, started: float, name: str) -> None:
        elapsed = (time.monotonic() - started) * 1000
        entry["ms"] = round(elapsed)
        events.request.fire(
            request_type="WS",
            name=name,
            response_time=elapsed,
            response_length=0,
            exception=None if entry["outcome"] != "lost" else RuntimeError(str(entry)),
            context={},
        )
        _record(entry)

    @task
    def chat_dropped(self) -> None:
        """A chat on a socket of its own, closed as soon as the first chunk comes:
        the consumer cancels the generation and still writes its usage record."""
        if not _take():
            time.sleep(1)
            return
        rid = f"{PREFIX}-wsdropped-{uuid.uuid4().hex[:12]}"
        entry = {"id": rid, "kind": "ws", "records": [rid], "at": "chunks"}
        started = time.monotonic()
        ws = None
        try:
            ws = self._connect()
            body = {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": "Write a long story about the sea."}],
                "max_tokens": max(MAX_TOKENS, 64),
            }
            ws.send(json.dumps({"type": "chat.completion.create", "request_id": rid, "body": body}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("request_id") != rid:
                    continue
                if msg["type"] == "chat.completion.chunk":
                    entry["outcome"] = "disconnected"
                    break
                if msg["type"] == "chat.completion.done":
                    entry["outcome"] = "ok"  # ended before the first chunk was read
                    break
                if msg["type"] == "error":
                    code = (msg.get("error") or {}).get("code")
                    refused = code in REFUSAL_CODES
                    entry.update(outcome="refused" if refused else "lost", error=msg["error"])
                    self.retry_after(msg.get("retry_after"))
                    break
        except Exception as exc:
            entry.update(outcome="lost", error=repr(exc)[:300])
        finally:
            if ws is not None:
                ws.close()
        self._fire(entry, started, "ws-dropped")
