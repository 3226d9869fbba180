"""Model workers in their own processes, behind two gateway processes (`manage.py serve`).

One live `serve` (gateway A, the supervisor and one worker per model) plus a
second daphne gateway (B) attached to the same supervisor, both driven by the
`openai` SDK: their requests share one batch, admin actions through A are seen
by B, and a worker killed (SIGKILL, SIGSEGV) or stopped (SIGSTOP) mid-stream
ends its requests cleanly and comes back while the other model keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests import live

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "qwen2.5-coder-0.5b-instruct"
BASE = "gemma-3-270m"
HANG_SECONDS = 8


@pytest.fixture(scope="module")
def servers(tmp_path_factory, django_db_blocker):
    with django_db_blocker.unblock():
        srv, stop = live.start(
            tmp_path_factory.mktemp("workers"),
            extra_env={"LLMSITE_WORKER_HANG_SECONDS": str(HANG_SECONDS)},
        )
    data_dir = Path(srv.env["LLMSITE_DATA_DIR"])
    lock = json.loads((data_dir / "serve.lock").read_text())
    port = live.free_port()
    log = (data_dir / "gateway-b.log").open("wb")
    gateway_b = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "llmsite.asgi:application",
        ],
        cwd=live.ROOT,
        env={**srv.env, "LLMSITE_SUPERVISOR": lock["run_dir"]},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    b_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{b_url}/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert gateway_b.poll() is None and time.monotonic() < deadline, "gateway B never ready"
        time.sleep(0.2)
    yield srv, b_url, lock
    gateway_b.terminate()
    gateway_b.wait(20)
    log.close()
    stop()


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def status(srv) -> dict:
    return json.loads(srv.manage("models", "status"))


def worker_pid(srv, model: str) -> int:
    return status(srv)[model]["pid"]


def wait_loaded(srv, model: str, old_pid: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = status(srv).get(model)
        if view and view["state"] == "loaded" and view["pid"] != old_pid:
            return view
        time.sleep(0.3)
    raise AssertionError(f"the {model} worker was not back within {timeout} s: {status(srv)}")


def usage_rows(srv, since_id: int) -> list[tuple]:
    return srv.query(
        "SELECT id, status, completion_tokens, model_id FROM billing_usagerecord WHERE id > ? "
        "ORDER BY id",
        (since_id,),
    )


def last_usage_id(srv) -> int:
    return srv.query("SELECT COALESCE(MAX(id), 0) FROM billing_usagerecord")[0][0]


def test_two_gateways_share_one_worker_and_one_batch(servers):
    srv, b_url, _ = servers
    before = status(srv)[CHAT]
    clients = [sdk(srv.base_url, srv.api_key), sdk(b_url, srv.api_key)]
    texts: list[str] = []

    def run(client):
        stream = client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Count from one to forty in words."}],
            max_tokens=48,
            temperature=0,
            stream=True,
        )
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    threads = [threading.Thread(target=run, args=(clients[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(texts) == 8 and all(texts)
    after = status(srv)[CHAT]
    # One worker, loaded once, served both processes' requests in one batch:
    # more sequences at once than either gateway's four.
    assert after["pid"] == before["pid"] and after["generation"] == before["generation"]
    assert after["stats"]["peak_active_sequences"] > 4
    workers = subprocess.run(
        ["pgrep", "-f", f"inference.workers.worker.*{CHAT}"], capture_output=True, text=True
    ).stdout.split()
    assert len(workers) == 1


def staff_token(srv) -> str:
    srv.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; from django.contrib.auth.models import "
        "Permission; u = get_user_model().objects.create_user(username='ops', "
        "password='ops-pass-123', is_staff=True); "
        "u.user_permissions.add(Permission.objects.get(codename='manage_engine'))",
    )
    reply = httpx.post(
        f"{srv.base_url}/api/auth/token/", json={"username": "ops", "password": "ops-pass-123"}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["access"]


def test_unload_and_reload_through_one_gateway_are_seen_by_the_other(servers):
    srv, b_url, _ = servers
    token = staff_token(srv)
    headers = {"Authorization": f"Bearer {token}"}

    def stats_from(url: str) -> dict:
        reply = httpx.get(f"{url}/api/admin/stats", headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        return {m["id"]: m for m in reply.json()["models"]}

    reply = httpx.post(f"{srv.base_url}/api/admin/models/{BASE}/unload", headers=headers)
    assert reply.status_code == 200, reply.text
    time.sleep(0.5)
    assert stats_from(b_url)[BASE]["state"] == "unloaded"
    assert BASE not in status(srv)

    reply = httpx.post(
        f"{srv.base_url}/api/admin/models/{BASE}/load?wait=60", headers=headers, timeout=90
    )
    assert reply.status_code == 200, reply.text
    pid = worker_pid(srv, BASE)
    time.sleep(0.5)
    assert stats_from(b_url)[BASE]["state"] == "loaded"

    reply = httpx.post(
        f"{b_url}/api/admin/models/{BASE}/reload?wait=60", headers=headers, timeout=90
    )
    assert reply.status_code == 200, reply.text
    assert worker_pid(srv, BASE) != pid
    # The same answer from both processes: one worker's figures.
    a, b = stats_from(srv.base_url)[BASE], stats_from(b_url)[BASE]
    assert a["state"] == b["state"] == "loaded"
    assert a["engine_stats"]["worker_pid"] == b["engine_stats"]["worker_pid"]


def stream_then_signal(srv, url: str, sig: int) -> tuple[list[dict], int]:
    """Start a long stream through `url`, send the chat worker `sig` once tokens flow;
    returns the SSE events and the signalled pid."""
    pid = worker_pid(srv, CHAT)
    events: list[dict | str] = []
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": 400,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {srv.api_key}"}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
            if len(events) == 5:
                os.kill(pid, sig)
    return events, pid


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_worker_killed_mid_stream_ends_the_stream_and_comes_back(servers, sig):
    srv, b_url, _ = servers
    since = last_usage_id(srv)
    other = sdk(b_url, srv.api_key)
    events, pid = stream_then_signal(srv, srv.base_url, sig)
    # The stream ends cleanly: an error event, then [DONE].
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "model_worker_crashed"
    # The other model served throughout.
    assert other.completions.create(model=BASE, prompt="One, two,", max_tokens=3).choices
    view = wait_loaded(srv, CHAT, pid)
    assert view["crashes"] >= 1
    reply = other.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    sent = sum(
        1 for e in events[:-2] if isinstance(e, dict) and e["choices"][0]["delta"].get("content")
    )
    deadline = time.monotonic() + 20
    while True:
        rows = [r for r in usage_rows(srv, since) if r[3] == CHAT]
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # One record per request: the failed stream, with the tokens it sent, and the retry.
    assert len(rows) == 2, rows
    failed = rows[0]
    assert failed[1] == "error" and failed[2] >= sent >= 1
    assert rows[1][1] == "ok"
    crashes = srv.query("SELECT data FROM accounts_auditlog WHERE action = 'model.worker_crashed'")
    assert any(str(pid) in str(row[0]) for row in crashes)
    metrics = httpx.get(f"{srv.base_url}/metrics").text
    assert f'llmsite_model_worker_crashes_total{{model="{CHAT}"}}' in metrics


def test_a_hung_worker_is_detected_and_restarted(servers):
    srv, _, _ = servers
    pid = worker_pid(srv, CHAT)
    os.kill(pid, signal.SIGSTOP)
    try:
        view = wait_loaded(srv, CHAT, pid, timeout=HANG_SECONDS + 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert view["crashes"] >= 1
    client = sdk(srv.base_url, srv.api_key)
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


def test_a_client_disconnect_frees_the_sequence_across_the_process_boundary(servers):
    srv, _, _ = servers
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Write a very long essay about the sea."}],
        "max_tokens": 1000,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {srv.api_key}"}
    generated = status(srv)[CHAT]["stats"]["tokens_generated"]
    with httpx.stream(
        "POST", f"{srv.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n > 6:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = status(srv)[CHAT]["stats"]
        if stats.get("in_flight") == 0:
            break
        time.sleep(0.1)
    stats = status(srv)[CHAT]["stats"]
    assert stats["in_flight"] == 0
    # Left long before its 1000 tokens: the worker stopped generating for it.
    assert stats["tokens_generated"] - generated < 1000


def test_a_second_serve_on_the_same_data_dir_fails_clearly(servers):
    srv, _, lock = servers
    result = subprocess.run(
        [sys.executable, "manage.py", "serve", "--port", str(live.free_port())],
        cwd=live.ROOT,
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"pid {lock['pid']}" in result.stderr and "data dir" in result.stderr
