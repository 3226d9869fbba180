from __future__ import annotations

import multiprocessing

import pytest

from llmsite import env
from llmsite.env import ConfigError, secret_key_file


def test_the_key_file_only_appears_once_written_whole(tmp_path, monkeypatch):
    path = tmp_path / "secret_key"
    real = env.secrets.token_urlsafe

    def generate(n):
        # A process reading now must find no file, not an empty or partial one.
        assert not path.exists()
        return real(n)

    monkeypatch.setattr(env.secrets, "token_urlsafe", generate)
    key = secret_key_file(path)
    assert len(key) >= 32 and path.read_text() == key
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temp file left


def test_processes_starting_together_agree_on_one_key(tmp_path):
    path = tmp_path / "secret_key"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        keys = pool.map(secret_key_file, [path] * 32)
    assert len(set(keys)) == 1 and len(keys[0]) >= 32


def test_an_empty_key_file_is_refused_loudly(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text("")
    with pytest.raises(ConfigError):
        secret_key_file(path)
