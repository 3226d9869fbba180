"""Settings from the environment: typed readers that fail loudly, and the channel layer."""

from __future__ import annotations

import subprocess
import sys

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from llmsite.env import ConfigError, env_networks
from tests.helpers import embedded_env


async def test_channel_layer_round_trip():
    layer = get_channel_layer()
    expected = "RedisChannelLayer" if settings.REDIS_URL else "InMemoryChannelLayer"
    assert type(layer).__name__ == expected
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "chat.ping", "n": 1})
    assert await layer.receive(channel) == {"type": "chat.ping", "n": 1}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "http://nope"),
        ("LLMSITE_DEBUG", "maybe"),
        ("LLMSITE_MAX_BODY_BYTES", "lots"),
        ("LLMSITE_ROUTER_STRATEGY", "fastest"),
        ("LLMSITE_ENGINE_NICE", "20"),  # nice values stop at 19
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(name, value):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**embedded_env(), name: value},
    )
    assert result.returncode != 0
    assert name in result.stderr


def test_allow_list_variable_is_parsed_and_checked(monkeypatch):
    monkeypatch.setenv("LLMSITE_METRICS_ALLOW_IPS", "10.0.0.0/8, 192.168.1.7 ,fd00::/8")
    nets = env_networks("LLMSITE_METRICS_ALLOW_IPS", ["127.0.0.1"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    monkeypatch.setenv("LLMSITE_METRICS_ALLOW_IPS", "none")
    assert env_networks("LLMSITE_METRICS_ALLOW_IPS", ["127.0.0.1"]) == []
    monkeypatch.delenv("LLMSITE_METRICS_ALLOW_IPS")
    assert [str(n) for n in env_networks("X_UNSET", ["127.0.0.1", "::1"])] == [
        "127.0.0.1/32",
        "::1/128",
    ]
    monkeypatch.setenv("LLMSITE_METRICS_ALLOW_IPS", "10.0.0.0/8,localhost")
    with pytest.raises(ConfigError, match="LLMSITE_METRICS_ALLOW_IPS"):
        env_networks("LLMSITE_METRICS_ALLOW_IPS", [])


@pytest.mark.parametrize(
    ("name", "value"),
    [("LLMSITE_METRICS_ALLOW_IPS", "not-an-ip"), ("LLMSITE_METRICS_TOKEN", "short")],
)
def test_bad_metrics_settings_fail_at_start_naming_the_variable(name, value):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**embedded_env(), name: value},
    )
    assert result.returncode != 0
    assert name in result.stderr
