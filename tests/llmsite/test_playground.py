"""The playground in real headless Chromium against a live daphne server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests import live

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "playground.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, stop = live.start(tmp_path_factory.mktemp("browser"))
    yield srv
    stop()


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    page.goto(server.base_url + "/")
    yield page
    context.close()


def use_key(page, key):
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()


def test_assistant_text_streams_in_then_stop_ends_it_with_usage(page, server, tmp_path):
    use_key(page, server.api_key)
    expect(page.locator("#m-status")).to_have_text("ready", timeout=30_000)
    expect(page.get_by_label("Model")).to_have_value("qwen2.5-coder-0.5b-instruct")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("60")
    page.get_by_label("Message").fill("Write a haiku about a lighthouse, one line per verse.")
    page.get_by_role("button", name="Send").click()

    assistant = page.locator("#transcript li.assistant p").last
    samples = []
    while page.locator("#m-status").inner_text() == "generating" and len(samples) < 2000:
        samples.append(len(assistant.inner_text()))
        page.wait_for_timeout(20)
    expect(page.locator("#m-status")).to_have_text("done", timeout=60_000)
    final = len(assistant.inner_text())
    grew = sorted({n for n in samples if 0 < n < final})
    # The text was seen at several intermediate lengths before it was complete.
    assert len(grew) >= 2, samples
    assert int(page.locator("#m-completion").inner_text()) >= 1
    assert page.locator("#m-ttft").inner_text().endswith("ms")
    # The answer is plain text with its line breaks kept (a haiku is three lines).
    assert "\n" in assistant.inner_text().strip(), assistant.inner_text()
    assert assistant.evaluate("p => getComputedStyle(p).whiteSpace") == "pre-wrap"
    # README's screenshot is refreshed on demand, so a test run leaves the tree clean.
    shot = SCREENSHOT if os.environ.get("LLMSITE_UPDATE_SCREENSHOT") else tmp_path / "page.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.get_by_label("Max tokens").fill("2000")
    page.get_by_label("Message").fill("Now write a very long poem about the sea.")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#transcript li.assistant p").last).not_to_have_text("", timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#m-status")).to_have_text("stopped", timeout=30_000)
    completion = int(page.locator("#m-completion").inner_text())
    assert 1 <= completion < 2000
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_sign_in_with_a_password_then_chat(page, server):
    server.manage(
        "create_user", "pat", "--tenant", "live", "--role", "member", stdin="Browser-pass-123\n"
    )
    page.get_by_label("Username").fill("pat")
    page.get_by_label("Password").fill("Browser-pass-123")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#m-status")).to_have_text("ready", timeout=30_000)
    expect(page.locator("#who")).to_have_text("as pat")
    page.get_by_label("Max tokens").fill("4")
    page.get_by_label("Message").fill("Hi")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#m-status")).to_have_text("done", timeout=60_000)
    assert int(page.locator("#m-completion").inner_text()) >= 1


def test_rate_limit_shows_its_retry_time(page, server):
    prefix = server.api_key[len("sk-llm-") :].split("_")[0]
    server.manage("set_quota", "--tenant", "live", "--key-prefix", prefix, "--tokens-per-day", "1")
    try:
        use_key(page, server.api_key)
        expect(page.locator("#m-status")).to_have_text("ready", timeout=30_000)
        page.get_by_label("Message").fill("Hello")
        page.get_by_role("button", name="Send").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Rate limited", timeout=15_000)
        expect(alert).to_contain_text("retry in")
    finally:
        server.manage(
            "set_quota", "--tenant", "live", "--key-prefix", prefix, "--tokens-per-day", "none"
        )


def test_bad_key_shows_an_error(page):
    use_key(page, "sk-llm-000000000000_not-a-real-key")
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible(timeout=15_000)
    expect(alert).to_contain_text("not accepted")
    expect(page.locator("#chat")).to_be_hidden()


def test_unknown_model_error_is_readable(page, server):
    use_key(page, server.api_key)
    expect(page.locator("#m-status")).to_have_text("ready", timeout=30_000)
    page.evaluate(
        "() => { const o = document.createElement('option'); o.value = o.textContent = 'nope';"
        " document.getElementById('model').appendChild(o); }"
    )
    page.get_by_label("Model").select_option("nope")
    page.get_by_label("Message").fill("Hello")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("alert")).to_contain_text("Model not found", timeout=15_000)
