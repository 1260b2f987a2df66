"""Faults at the HTTP edge, with a fake engine: clients that leave at awkward moments free what they held."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.app.test_api_fake_engine import CHAT, body, make_app
from tests.fakes import FakeEngine


async def call(app: Litestar, payload: dict[str, Any], headers: dict[str, str], *,
               send_fails: bool) -> list[dict[str, Any]]:
    """One ASGI request whose client is gone once the body was read: the server either hears a disconnect or,
    as the ASGI spec lets it, raises from send (then the response body never starts)."""
    raw = json.dumps(payload).encode()
    incoming = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if send_fails:
            raise OSError("the client closed the connection")
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                         *((k.lower().encode(), v.encode()) for k, v in headers.items())]}
    try:
        await app(scope, receive, send)  # type: ignore[arg-type]
    except Exception as exc:  # Litestar wraps what send raised once the response had started
        chain = [exc]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        assert send_fails and any(isinstance(e, OSError) for e in chain), chain
    return sent


@pytest.mark.parametrize("send_fails", [False, True], ids=["disconnect", "send-raises"])
def test_a_stream_whose_client_left_at_once_frees_its_slot_and_session(tmp_path: Path, send_fails: bool) -> None:
    engine = FakeEngine()
    app = make_app(engine, sessions_path=str(tmp_path / "s.sqlite3"), max_concurrent_per_key=1,
                   session_busy_timeout_s=1.0, session_continuation="template")
    with TestClient(app) as client:
        client.blocking_portal.call(partial(call, send_fails=send_fails), app, body(stream=True),
                                    {"X-Session-ID": "gone"})
        assert len(engine.requests) == 1
        # One request in flight per key is the limit, and the session was held: both must be free again.
        again = client.post(CHAT, json=body(stream=False), headers={"X-Session-ID": "gone"})
        assert again.status_code == 200, again.text
        turns = client.get("/v1/sessions/gone").json()["turns"]
        assert turns == (1 if send_fails else 2)  # a body that never started stored nothing
