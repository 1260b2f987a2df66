"""SIGTERM while a session's stream is running: the stream finishes, new connections are refused, the
process exits cleanly, and the turn is in the session store after it (read from the store itself: that a
restarted server serves what is stored is tests/e2e/test_sessions.py's restart test)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx

from sessions.manager import owner_of
from store.base import open_store
from store.records import Transcript
from tests.conftest import SMALL_MODEL, start_server

SESSION = "shutdown:one"


def test_sigterm_drains_running_streams_and_keeps_the_session(tmp_path):
    db = str(tmp_path / "sessions.db")
    args = ("--model", SMALL_MODEL, "--quantize", "none", "--sessions-path", db, "--shutdown-grace-s", "60")
    server = start_server(tmp_path, *args)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count slowly."}], "max_tokens": 48,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    pieces, finish, usage, refused = [], None, None, False
    try:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120,
                          headers={"X-Session-ID": SESSION}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
                    finish = choice.get("finish_reason") or finish
                usage = chunk.get("usage") or usage
                if len(pieces) == 4:
                    server.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.5)
                    try:  # the listening socket is closed at once
                        httpx.get(f"{server.base_url}/health", timeout=2)
                    except httpx.TransportError:
                        refused = True
        # uvicorn re-raises the signal once it has shut down, so supervisors see a SIGTERM exit
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert refused, "a new connection was accepted after SIGTERM"
    assert finish == "length" and usage["completion_tokens"] == 48, (finish, usage)

    stored = stored_session(db)
    assert stored.turns == 1 and stored.completion_tokens == 48
    assert stored.messages[-1] == {"role": "assistant", "content": "".join(pieces)}


def test_grace_zero_cancels_streams_but_still_stores_what_was_sent(tmp_path):
    db = str(tmp_path / "sessions.db")
    args = ("--model", SMALL_MODEL, "--quantize", "none", "--sessions-path", db, "--shutdown-grace-s", "0")
    server = start_server(tmp_path, *args)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count slowly."}], "max_tokens": 400,
            "temperature": 0, "ignore_eos": True, "stream": True}
    received = []
    try:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120,
                          headers={"X-Session-ID": SESSION}) as response:
            try:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        received.extend(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])
                    if len(received) == 4:
                        server.proc.send_signal(signal.SIGTERM)
            except httpx.TransportError:
                pass  # the stream is cut: that is what grace 0 means
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    stored = stored_session(db)
    # the transcript holds at least what the client received
    assert stored.turns == 1
    assert stored.messages[-1]["content"].startswith("".join(received))
    assert stored.completion_tokens < 400


def stored_session(db: str) -> Transcript:
    """SESSION as the stopped server left it in its store (the client sent no API key)."""
    async def load() -> Transcript | None:
        store = await open_store(None, Path(db), timeout_s=5, pool_size=1)
        try:
            return await store.load_transcript(owner_of(None), SESSION)
        finally:
            await store.close()
    stored = asyncio.run(load())
    assert stored is not None, "the session is not in the store"
    return stored
