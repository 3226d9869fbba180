"""The configured channel layer (in-memory, or channels_redis with REDIS_URL) round-trips."""

from __future__ import annotations

from channels.layers import get_channel_layer
from django.conf import settings


async def test_channel_layer_round_trip():
    layer = get_channel_layer()
    expected = "RedisChannelLayer" if settings.REDIS_URL else "InMemoryChannelLayer"
    assert type(layer).__name__ == expected
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.ping", "n": 1})
    assert await layer.receive(channel) == {"type": "chat.ping", "n": 1}
