"""A small OpenAI-compatible server on loopback, for the remote backend's tests.

It answers /v1/chat/completions, /v1/completions (whole or streamed) and
/v1/embeddings with fixed content, and records the bodies it was sent.
`status` makes every answer that HTTP status; `stream_error` ends a stream
with an error event after its first chunk. `tool_calls` makes a chat answer
that call list instead of text (whole, or streamed as OpenAI does: the id and
name first, then the arguments in pieces).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["Hello", " there", "!"]
CALLS = [
    {"id": "call_up1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"id": "call_up2", "name": "get_time", "arguments": "{}"},
]


class FakeOpenAI:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        self.stream_error = False
        self.usage = True
        self.tool_calls = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.bodies.append({"path": self.path, **body})
                if outer.status != 200:
                    self._json(
                        outer.status,
                        {"error": {"message": "no", "type": "x", "param": "p", "code": "c"}},
                    )
                    return
                if self.path.endswith("/embeddings"):
                    self._json(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {"object": "embedding", "index": i, "embedding": [0.5, -0.5]}
                                for i, _ in enumerate(body["input"])
                            ],
                            "usage": {"prompt_tokens": 7, "total_tokens": 7},
                        },
                    )
                    return
                chat = self.path.endswith("/chat/completions")
                if chat and outer.tool_calls:
                    self._calls(bool(body.get("stream")))
                elif body.get("stream"):
                    self._stream(chat)
                else:
                    self._whole(chat)

            def _json(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _whole(self, chat: bool) -> None:
                text = "".join(WORDS)
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text}}
                    if chat
                    else {"index": 0, "text": text}
                )
                payload = {
                    "id": "up-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "choices": [{**choice, "finish_reason": "stop", "logprobs": None}],
                }
                if outer.usage:
                    payload["usage"] = {"prompt_tokens": 5, "completion_tokens": 3}
                self._json(200, payload)

            def _send(self, payload) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()

            def _calls(self, stream: bool) -> None:
                usage = {"prompt_tokens": 5, "completion_tokens": 9}
                if not stream:
                    calls = [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for c in CALLS
                    ]
                    message = {"role": "assistant", "content": None, "tool_calls": calls}
                    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
                    self._json(200, {"id": "up-1", "choices": [choice], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def delta(payload: dict, finish=None) -> None:
                    choice = {"index": 0, "delta": payload, "finish_reason": finish}
                    self._send({"id": "up", "choices": [choice]})

                delta({"role": "assistant", "content": None})
                for i, c in enumerate(CALLS):
                    first = {"name": c["name"], "arguments": ""}
                    item = {"index": i, "id": c["id"], "type": "function", "function": first}
                    delta({"tool_calls": [item]})
                    args = c["arguments"]
                    for start in range(0, len(args), 4):
                        piece = {"index": i, "function": {"arguments": args[start : start + 4]}}
                        delta({"tool_calls": [piece]})
                delta({}, "tool_calls")
                self._send({"id": "up", "choices": [], "usage": usage})
                self._send("[DONE]")

            def _stream(self, chat: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                send = self._send

                for i, word in enumerate(WORDS):
                    piece = {"delta": {"content": word}} if chat else {"text": word}
                    send({"id": "up", "choices": [{"index": 0, **piece, "finish_reason": None}]})
                    if outer.stream_error and i == 0:
                        send({"error": {"message": "boom", "type": "server_error", "code": "x"}})
                        return
                last = {"delta": {}} if chat else {"text": ""}
                send({"id": "up", "choices": [{"index": 0, **last, "finish_reason": "stop"}]})
                if outer.usage:
                    send(
                        {
                            "id": "up",
                            "choices": [],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
                        }
                    )
                send("[DONE]")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
