"""Requests an HTTP client would tidy up before sending (raw paths, repeated header lines): as raw ASGI calls,
and on the wire to a real uvicorn server in a thread on 127.0.0.1."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar import Litestar


@contextmanager
def serving(app: Litestar, start_timeout_s: float = 30) -> Iterator[int]:
    """Serve `app` (uvicorn's defaults, as `python -m app serve` uses them) and yield the port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="live-test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
            time.sleep(0.05)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def asgi_request(app: Litestar, method: str, raw_path: str, headers: list[tuple[str, str]] | None = None,
                       body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request with the raw (still percent-encoded) path decoded as uvicorn decodes it, and the header
    lines exactly as given (repeats included)."""
    lines = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    if body:
        lines.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": urllib.parse.unquote(raw_path), "raw_path": raw_path.encode("ascii"), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "headers": lines}
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent
                                                      if m["type"] == "http.response.body")
