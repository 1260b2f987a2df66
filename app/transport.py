"""Transport bounds: how long and how much a client may take to send a request (docs/security.md#connections).

uvicorn's httptools protocol bounds none of it: a connection that stops half-way through its headers or its
body is held as long as the client likes, and so is a megabyte of headers; and a response sent before the
body was read (413, 401) is followed by a plain close, so the kernel resets the connection while the client
is still sending, often before it has read the response. LodestarHTTP is that protocol with a header
deadline (header_timeout_s: 408), a header size limit (max_header_bytes: 431), a Content-Length over
max_body_bytes refused before the body is read (413; a chunked body that grows too large gets Litestar's
413), a deadline for the whole body (body_timeout_s: 408), our keepalive_timeout_s for uvicorn's idle timer,
a last response on a connection (keepalive_max_requests), and a lingering close (app/linger.py) whenever
the client may still be sending. Refusals are OpenAI-shaped JSON errors with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import uuid
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.linger import LingeringClose
from core.errors import APIError
from core.replies import encode
from core.settings import ConnectionSettings

log = logging.getLogger("lodestar.transport")

RECHECK_S = 1.0  # a body deadline that passes while the server itself holds the body back is checked again


class _Refusal(Exception):
    """An answer to a request that will not reach the app. Raised in a parser callback, it stops the parser
    (httptools re-raises it as the context of an HttpParserCallbackError); data_received sends it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Transport:
    """The transport that uvicorn's protocol and request cycles see: its close() may linger (_close), and
    a lingering connection counts as closing. Everything else is the real transport."""

    def __init__(self, transport: asyncio.Transport, protocol: LodestarHTTP) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol._close()

    def is_closing(self) -> bool:
        return self._protocol._lingering.active or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LodestarHTTP(HttpToolsProtocol):
    limits: ConnectionSettings  # set by protocol_class()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's keep-alive timer (typed int there; loop.call_later takes our float seconds)
        self.timeout_keep_alive = self.limits.keepalive_timeout_s  # type: ignore[assignment]
        self._raw: asyncio.Transport = None  # type: ignore[assignment]
        self._phase = "idle"  # "headers" from a request's first byte, "body" once its headers are complete
        self._header_bytes = 0  # of the request being read, as the parser reports them
        self._unparsed_bytes = 0  # received since the last complete headers (httptools buffers a header line)
        self._keep_alive = True  # the latest cycle's own keep-alive, held back until its body is complete
        self._requests = 0  # on this connection; the last one allowed closes it (keepalive_max_requests)
        self._running: RequestResponseCycle | None = None  # the cycle whose app runs (later ones are queued)
        self._pending: _Refusal | None = None  # a refusal that waits for the responses before it
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._lingering: LingeringClose = None  # type: ignore[assignment]  # set with the transport

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        self._lingering = LingeringClose(self.loop, transport)
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._lingering.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering.active:
            self._lingering.received()
            return
        if self._pending is not None:
            return  # the connection ends with the refusal: nothing after it is parsed
        self._unset_keepalive_if_required()
        if self._phase != "body":
            self._unparsed_bytes += len(data)
            if self._responses_done():
                self._arm_header_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn does (websockets are off: ws="none")
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if not isinstance(refusal, _Refusal):
                refusal = _Refusal(400, "invalid_http", f"The request is not valid HTTP/1.1: {exc}")
            self._refuse(refusal)
            return
        # A header line that has not ended yet is in httptools' buffer, unseen by on_header: bound it here.
        if self._phase != "body" and self._unparsed_bytes > self.limits.max_header_bytes:
            self._refuse(self._headers_too_large())

    def shutdown(self) -> None:
        if self._responses_done():
            self._raw.close()  # the server is going away: no lingering
        else:
            super().shutdown()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_timer("_header_timer")
        length = self._content_length()
        if length is not None and length > self.limits.max_body_bytes:  # (self.cycle is the request before)
            raise _Refusal(413, "request_too_large", f"The request body ({length} bytes) is larger than the "
                           f"server accepts ({self.limits.max_body_bytes} bytes, see max_body_bytes)")
        self._phase, self._unparsed_bytes = "body", 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # (an upgrade makes no cycle)
            # A response that starts before the body is complete means the rest of the body will not be
            # read: that response must close the connection (with Connection: close; the close lingers).
            self._keep_alive, self.cycle.keep_alive = self.cycle.keep_alive, False
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._phase = "idle"
        self._cancel_timer("_body_timer")
        self._requests += 1
        if self._requests >= self.limits.keepalive_max_requests:
            self._keep_alive = False  # its response says Connection: close
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.keep_alive = self._keep_alive
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or not self._responses_done():
            return
        if self._pending is not None:
            self._unset_keepalive_if_required()
            self._send_refusal(self._pending)
        elif self._phase == "headers":  # the next request has begun: its headers are on the clock now
            self._unset_keepalive_if_required()
            self._arm_header_timer()

    def _unsupported_upgrade_warning(self) -> None:  # uvicorn's advises installing websockets: not wanted
        log.debug("an Upgrade request is served as plain HTTP (no websockets)")

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # Bounds

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > self.limits.max_header_bytes:
            raise self._headers_too_large()

    def _headers_too_large(self) -> _Refusal:
        return _Refusal(431, "headers_too_large", "The request line and headers are longer than the server "
                        f"accepts ({self.limits.max_header_bytes} bytes, see max_header_bytes)")

    def _content_length(self) -> int | None:
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:  # llhttp refuses a malformed one before this
                    return None
        return None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._phase == "idle":  # nothing of a request came: there is no one to answer
            self._raw.close()
            return
        self._refuse(_Refusal(408, "header_timeout", "The request headers did not arrive within "
                              f"{self.limits.header_timeout_s:g} s (see header_timeout_s)"))

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.flow.read_paused:  # the server holds the body back (the app has not read what came yet)
            self._body_timer = self.loop.call_later(RECHECK_S, self._body_timeout)
            return
        self._refuse(_Refusal(408, "body_timeout", "The request body did not arrive within "
                              f"{self.limits.body_timeout_s:g} s of its headers (see body_timeout_s)"))

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _cancel_timers(self) -> None:
        self._cancel_timer("_header_timer")
        self._cancel_timer("_body_timer")

    def _responses_done(self) -> bool:
        """No response is being sent or waiting to be (a cycle cut off by a refusal sends none)."""
        running = self._running
        return not self.pipeline and (running is None or running.response_complete or running.disconnected)

    # Refusals and closing

    def _refuse(self, refusal: _Refusal) -> None:
        self._cancel_timers()
        cycle = self.cycle
        if self._phase == "body" and cycle is not None and not cycle.response_started:
            # The app waits (or would wait) for a body that will not come: it sees the client gone instead,
            # and whatever it sends is dropped.
            for entry in [entry for entry in self.pipeline if entry[0] is cycle]:
                self.pipeline.remove(entry)
            cycle.disconnected = True
            cycle.message_event.set()
        if self._responses_done():
            self._send_refusal(refusal)
        else:  # a pipelined request: answered after the responses before it (on_response_complete)
            self._pending = refusal

    def _send_refusal(self, refusal: _Refusal) -> None:
        self._pending = None
        request_id = uuid.uuid4().hex
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.info("%d %s from %s: %s (request %s)", refusal.status, refusal.code, client, refusal.message,
                 request_id)
        body = encode(APIError(refusal.status, refusal.message, code=refusal.code).body())
        head = [f"HTTP/1.1 {refusal.status} {http.HTTPStatus(refusal.status).phrase}\r\n".encode()]
        head += [b"%s: %s\r\n" % header for header in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
                    b"x-request-id: %s\r\n\r\n" % (len(body), request_id.encode()))
        self._raw.write(b"".join(head) + body)
        self._linger()

    def _close(self) -> None:
        """uvicorn closes the connection (Connection: close, a response before the body, a bad request, the
        keep-alive timer, ...). If part of a request may still be on its way, linger."""
        if self._lingering.active or self._raw.is_closing():
            return
        if self._phase == "idle":
            self._raw.close()
        else:
            self._linger()

    def _linger(self) -> None:
        self._cancel_timers()
        self._unset_keepalive_if_required()
        self._lingering.begin()

    # The client's FIN while lingering: uvicorn's eof_received returns None, so the transport closes itself.


def protocol_class(limits: ConnectionSettings) -> type[LodestarHTTP]:
    """The protocol class for uvicorn.run(http=...), bound to these settings."""
    return type("LodestarHTTP", (LodestarHTTP,), {"limits": limits})
