"""A lean HTTP/1.1 client for the workers: httptools (uvicorn's C parser) on an asyncio protocol, with
kept-alive connections. A streamed body is handed over as the pieces that arrived together: one Python
wake-up per read of the socket, not per HTTP chunk (SGLang sends each token event as its own chunk, and a
relay reads tens of thousands a second; docs/benchmarks.md#relay)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httptools

_PAUSE_AT = 4 << 20  # bytes held for the reader before the socket is paused


class HTTPError(Exception):
    """The exchange failed (the message says how)."""


class ConnectFailed(HTTPError):
    """No connection: nothing was sent."""


class ReadTimeout(HTTPError):
    pass


class _Connection(asyncio.Protocol):
    """One TCP connection and the response being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pieces: list[bytes] = []
        self.held = 0
        self.status = 0
        self.headers_done = self.complete = self.closed = self.received = self.keep_alive = False
        self.error: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        # One silence timer per connection, pushed back lazily: a read only notes its time (an asyncio.timeout
        # per read cost a timer handle and a heap push and cancel on every token event).
        self._loop = asyncio.get_running_loop()  # its clock times the silences
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s = 0.0
        self._quiet_since = 0.0  # the later of the last data and the start of the current wait

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._quiet_since = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = f"unreadable HTTP response: {exc}"
            self.close()
        if self.held > _PAUSE_AT and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    # -- httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.held += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # asked now: the parser resets after this

    # -- use
    def send(self, request: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.held = 0, 0
        self.headers_done = self.complete = self.received = self.keep_alive = False
        assert self.transport is not None
        self.transport.write(request)

    def take(self) -> list[bytes]:
        pieces, self.pieces = self.pieces, []
        if self.held > _PAUSE_AT and self.transport is not None:
            self.transport.resume_reading()
        self.held = 0
        return pieces

    async def wait(self, timeout_s: float) -> None:
        """Until something happens: body pieces, the end, a failure (ReadTimeout after `timeout_s` of
        silence from the server, counted from the later of its last data and this call)."""
        if self.pieces or self.complete or self.closed:
            return
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        self._quiet_since, self._timeout_s = loop.time(), timeout_s
        due, timer = self._quiet_since + timeout_s, self._timer
        if timer is None or timer.when() > due:  # (a shorter timeout than the armed one's: arm anew)
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(due, self._check_silence)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_silence(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no one waits: the next wait arms the timer again
        due = self._quiet_since + self._timeout_s
        if self._loop.time() >= due:
            waiter.set_exception(ReadTimeout(f"no answer within {self._timeout_s:g} s"))
        else:
            self._timer = self._loop.call_at(due, self._check_silence)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed


class Response:
    def __init__(self, connection: _Connection, read_timeout_s: float) -> None:
        self._connection = connection
        self._timeout = read_timeout_s
        self.status = connection.status

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The body as it arrives: the pieces of each read, until the response is complete."""
        connection = self._connection
        while True:
            pieces = connection.take()
            if pieces:
                yield pieces
            if connection.complete:
                return
            if connection.closed:
                raise HTTPError(connection.error or "the connection closed before the response was complete")
            await connection.wait(self._timeout)

    async def read(self) -> bytes:
        return b"".join([piece async for batch in self.batches() for piece in batch])


class HTTPClient:
    """Requests to one origin (`http://host:port` or https), over up to `max_idle` kept-alive connections."""

    def __init__(self, url: str, *, headers: dict[str, str], connect_timeout_s: float, read_timeout_s: float,
                 max_idle: int = 64) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if self._ssl else 80)
        host = self._host if default_port else f"{self._host}:{self._port}"
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers}.items())
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._idle: list[_Connection] = []
        self._max_idle = max_idle

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(str(exc) or "connection timed out") from None
        return connection

    def _encode(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None) -> bytes:
        lines = [f"{method} {self._prefix}{path} HTTP/1.1\r\n", self._head]
        lines += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + (body or b"")

    @asynccontextmanager
    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      read_timeout_s: float | None = None) -> AsyncIterator[Response]:
        """Send a request and hand over its response once the headers are in; the body is read through
        it. The connection is kept for the next request if the body was read to its end."""
        request = self._encode(method, path, body, headers)
        timeout = read_timeout_s or self._read_timeout
        connection = await self._sent(request, timeout)
        try:
            yield Response(connection, timeout)
        finally:
            if connection.reusable and len(self._idle) < self._max_idle:
                self._idle.append(connection)
            else:
                connection.close()

    async def _sent(self, request: bytes, timeout: float) -> _Connection:
        """A connection that has sent `request` and received the response's headers. A kept-alive
        connection the server had closed (nothing received) is replaced by a new one, once."""
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await self._headers(connection, request, timeout)
            except ReadTimeout:
                raise
            except HTTPError:
                if connection.received:
                    raise
        return await self._headers(await self._connect(), request, timeout)

    async def _headers(self, connection: _Connection, request: bytes, timeout: float) -> _Connection:
        connection.send(request)
        try:
            while not connection.headers_done:
                if connection.closed:
                    raise HTTPError(connection.error or "the connection closed before the response")
                await connection.wait(timeout)
        except BaseException:
            connection.close()
            raise
        return connection

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
