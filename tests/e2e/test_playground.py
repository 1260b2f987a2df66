"""The playground page in a real headless browser (Debian's chromium driven by Playwright) against a real
server with the tiny random-weight Qwen2.5-VL: it takes images and tool calls; its text is noise, the
page's and the server's work is real. Screenshots go to test-output/ at the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess, start_server
from tests.e2e.test_vision import PNG

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "sk-playground-test"
OUTPUT = ROOT / "test-output"
# An enum leaves the grammar no free text, so even random weights finish the call in a few tokens.
WEATHER = ('[{"type": "function", "function": {"name": "weather", "description": "Weather in a city.", '
           '"parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, '
           '"required": ["city"]}}}]')
# Chromium as root on a closed network: no sandbox, no background connections (they are refused).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_vl_model) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("playground"), "--model", str(tiny_vl_model),
                           "--quantize", "none", "--api-key", KEY)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        tab.goto(f"{server.base_url}/playground/")
        tab.fill("#api-key", KEY)
        tab.dispatch_event("#api-key", "change")
        tab.wait_for_function("document.querySelector('#model').options.length > 0")
        yield tab
        browser.close()


def send(page, text: str) -> None:
    replies = page.locator(".message.assistant").count()
    page.fill("#input", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.message.assistant .stats').length > {replies} && "
                           f"document.querySelectorAll('.message.assistant .stats')[{replies}].textContent")


def open_section(page, title: str) -> None:
    """Open a settings section (clicking its summary would close it if it is open already)."""
    page.locator("details", has=page.locator(f"summary:text-is('{title}')")).evaluate("d => { d.open = true; }")


def last_reply(page):
    return page.locator(".message.assistant").last


def test_a_prompt_streams_a_reply_with_its_figures(page) -> None:
    page.fill("#max_tokens", "12")
    send(page, "Say hello.")
    reply = last_reply(page)
    assert reply.locator(".answer").inner_text().strip()  # streamed text (noise: random weights)
    stats = reply.locator(".stats").inner_text()
    assert "prompt tokens" in stats and "completion tokens" in stats and "first token" in stats
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "playground-desktop.png"), full_page=True)


def test_an_attached_image_goes_with_the_message(page, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG)
    page.set_input_files("#image-input", str(image))
    page.wait_for_selector("#attachments img")
    send(page, "What is in the picture?")
    assert page.locator(".message.user img").count() == 1
    assert page.locator("#attachments img").count() == 0  # sent, so no longer attached
    assert "⚠" not in last_reply(page).inner_text()


def test_tools_are_checked_in_the_page_then_called(page) -> None:
    open_section(page, "Tools")
    page.fill("#tools", '[{"type": "function", "function": {"name": "bad name"}}]')
    assert "must match" in page.inner_text("#tools-error")
    page.fill("#tools", "[{")
    assert "Not valid JSON" in page.inner_text("#tools-error")
    # What only the server can tell (is it a valid JSON Schema?) comes back from it, beside the field.
    page.fill("#tools", '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", '
                        '"properties": {"a": {"type": "no-such-type"}}}}}]')
    page.wait_for_function("document.querySelector('#tools-error').textContent.includes('not a valid JSON Schema')")
    page.fill("#tools", WEATHER)
    assert page.inner_text("#tools-error") == ""
    page.select_option("#tool_choice", "required")
    page.fill("#max_tokens", "60")
    send(page, "What is the weather in Paris?")
    call = last_reply(page).locator(".tool-call").first
    assert call.inner_text().startswith("weather(")
    # A result for the call continues the loop: it is sent as a tool message.
    call.locator("input").fill('{"temperature": 21}')
    page.select_option("#tool_choice", "none")
    send(page, "Thanks.")
    assert page.locator(".message.tool").count() == 1
    page.fill("#tools", "")


def test_a_session_turn_reports_cached_tokens(page) -> None:
    page.click("#clear")
    open_section(page, "Session")
    page.fill("#session", "playground-session-1")
    page.dispatch_event("#session", "change")
    page.fill("#max_tokens", "6")
    send(page, "First turn of a session.")
    send(page, "Second turn.")
    cached = int(last_reply(page).locator(".stats").get_attribute("data-cached"))
    assert cached > 0
    page.fill("#session", "")
    page.dispatch_event("#session", "change")


def test_the_conversation_can_be_edited_in_place(page) -> None:
    page.click("#clear")
    page.fill("#max_tokens", "4")
    send(page, "A first message.")
    page.locator(".message.user .content").first.fill("An edited first message.")
    open_section(page, "Copy as code")
    page.click(".tabs button[data-lang=curl]")
    code = page.inner_text("#code")
    assert "An edited first message." in code and "A first message." not in code


def test_copy_as_python_runs_as_is(page, server, tmp_path: Path) -> None:
    page.click("#clear")
    page.fill("#max_tokens", "8")
    page.fill("#input", "Say something short.")
    open_section(page, "Copy as code")
    page.click(".tabs button[data-lang=python]")
    snippet = page.inner_text("#code")
    assert f'base_url="{server.base_url}/v1"' in snippet and 'os.environ["API_KEY"]' in snippet
    assert KEY not in snippet
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    run = subprocess.run([sys.executable, str(script)], env={**os.environ, "API_KEY": KEY}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    page.click(".tabs button[data-lang=curl]")
    assert "$API_KEY" in page.inner_text("#code")
    page.click(".tabs button[data-lang=javascript]")
    assert "process.env.API_KEY" in page.inner_text("#code")


def test_the_page_fits_a_360px_screen(page) -> None:
    page.set_viewport_size({"width": 360, "height": 780})
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "playground-360px.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
