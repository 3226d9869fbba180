from __future__ import annotations

import json

from asgiref.sync import async_to_sync


def read_stream(response) -> str:
    """The whole body of a streaming response whose content is an async iterator."""

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)().decode()


def sse_events(response) -> list[str]:
    return [event for event in read_stream(response).split("\n\n") if event]


def sse_chunks(events: list[str]) -> list[dict]:
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events if e != "data: [DONE]"]
