"""A local image origin on 127.0.0.1 (optionally TLS) with the routes the fetch tests need."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .imaging import solid

IMAGE = solid("PNG", (40, 30))
HUGE = 50 * 1024 * 1024
CHUNK = 64 * 1024


class Origin(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping in /slow must not hold up shutdown

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.sent: dict[str, int] = {}  # body bytes a streaming route managed to write
        self.finished: dict[str, threading.Event] = {}
        self.sni: list[str | None] = []
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def start(self) -> Origin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up mid-body is what several tests are about

    def event(self, path: str) -> threading.Event:
        return self.finished.setdefault(path, threading.Event())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Origin

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature fixed by the base class
        pass

    def do_GET(self) -> None:  # noqa: N802 - name fixed by the base class
        parsed = urllib.parse.urlsplit(self.path)
        path, query = parsed.path, dict(urllib.parse.parse_qsl(parsed.query))
        self.server.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
        self.close_connection = True
        if path in ("/image.png", "/mislabelled"):
            kind = "text/html" if path == "/mislabelled" else "image/png"
            return self._send(200, IMAGE, kind)
        if path == "/empty":
            return self._send(200, b"", "image/png")
        if path == "/text":
            return self._send(200, b"<html>not an image</html>", "text/html")
        if path.startswith("/redirect/"):
            remaining = int(path.rsplit("/", 1)[1])
            target = "/image.png" if remaining <= 1 else f"/redirect/{remaining - 1}"  # N hops to the image
            return self._redirect(302, target)
        if path == "/redirect-to":
            return self._redirect(int(query.get("status", "302")), query["location"])
        if path.startswith("/status/"):
            return self._send(int(path.rsplit("/", 1)[1]), b"no", "text/plain")
        if path == "/huge":
            return self._stream(path, declare_length=True)
        if path == "/huge-chunked":
            return self._stream(path, declare_length=False, junk="junk" in query)
        if path == "/chunked":
            return self._chunked([IMAGE[:10], IMAGE[10:100], IMAGE[100:]])
        if path == "/slow":
            time.sleep(float(query.get("delay", "3")))
            return self._send(200, IMAGE, "image/png")
        return self._send(404, b"missing", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunked(self, parts: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for part in parts:
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _stream(self, path: str, *, declare_length: bool, junk: bool = False) -> None:
        """HUGE bytes of a PNG-looking (or junk) body, produced lazily and counted as they are written."""
        self.server.sent[path] = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if declare_length:
                self.send_header("Content-Length", str(HUGE))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            block = (b"" if junk else IMAGE[:8]).ljust(CHUNK, b"\x00")
            while self.server.sent[path] < HUGE:
                data = block if declare_length else f"{len(block):x}\r\n".encode() + block + b"\r\n"
                self.wfile.write(data)
                self.wfile.flush()
                self.server.sent[path] += len(block)
                block = b"\x00" * CHUNK
            if not declare_length:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up, as it should
        finally:
            self.server.event(path).set()
