"""Transport bounds (app/transport.py) against a real server: half-open connections, stalled bodies,
oversize headers and bodies get bounded answers and closed connections, and normal traffic (keep-alive,
pipelining, SSE streams) is unchanged. The server runs with short timeouts so the file stays fast."""

from __future__ import annotations

import json
import selectors
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import SMALL_MODEL, start_server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
KEEPALIVE_S = 1.0
MAX_REQUESTS = 5  # per connection
MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 65_536
SLACK_S = 3.0  # scheduling slack on a shared machine
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("transport"), "--model", SMALL_MODEL, "--quantize", "none",
                          "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S),
                          "--keepalive-timeout-s", str(KEEPALIVE_S), "--max-header-bytes", str(MAX_HEADER_BYTES),
                          "--max-body-bytes", str(MAX_BODY_BYTES), "--keepalive-max-requests", str(MAX_REQUESTS))
    yield server
    server.stop()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when that was (seconds from now)."""
    started, data = time.monotonic(), b""
    deadline = started + within
    for _ in range(10_000):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the connection was still open after {within} s; got {data[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - started
        data += chunk
    raise AssertionError("too many reads")


def watch_until_closed(socks: list[socket.socket], within: float) -> list[tuple[bytes, float]]:
    """read_until_closed for many connections at once: what each got, and when it was closed."""
    started, deadline = time.monotonic(), time.monotonic() + within
    got: dict[socket.socket, bytes] = {sock: b"" for sock in socks}
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        for _ in range(100_000):
            if len(closed) == len(socks) or time.monotonic() > deadline:
                break
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = key.fileobj.recv(65536)
                got[key.fileobj] += chunk
                if not chunk:
                    closed[key.fileobj] = time.monotonic() - started
                    selector.unregister(key.fileobj)
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} connections still open after {within} s"
    return [(got[sock], closed[sock]) for sock in socks]


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split bytes holding whole responses with a Content-Length (status, headers, body)."""
    out = []
    for _ in range(100):
        if not data:
            return out
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    raise AssertionError("too many responses")


def assert_refused(data: bytes, status: int, code: str) -> None:
    (got, headers, body), = responses(data)
    assert got == status, data[:300]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"]


def test_half_open_connections_are_closed_while_others_are_served(server):
    socks = []
    try:
        for _ in range(100):
            sock = connect(server)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        watcher = ThreadPoolExecutor(1).submit(watch_until_closed, socks, HEADER_TIMEOUT_S + SLACK_S)
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
        reply = httpx.post(f"{server.base_url}{CHAT}", timeout=60, json={
            "model": SMALL_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
        for data, closed_after in watcher.result(timeout=HEADER_TIMEOUT_S + SLACK_S + 5):
            assert_refused(data, 408, "header_timeout")
            assert closed_after >= HEADER_TIMEOUT_S / 2  # (an upper bound: watch_until_closed's)
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200


def test_trickled_headers_get_408_at_the_deadline(server):
    """A header line every 0.2 s keeps coming, but the deadline is for all of the headers (slowloris)."""
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(100):
            if time.monotonic() - started > HEADER_TIMEOUT_S + 0.5:
                break
            sock.sendall(b"X-Slow: y\r\n")
            time.sleep(0.2)
        data, _ = read_until_closed(sock, SLACK_S)
    assert_refused(data, 408, "header_timeout")


def test_silent_connection_is_closed_without_an_answer(server):
    with connect(server) as sock:
        data, after = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert data == b"" and after >= HEADER_TIMEOUT_S * 0.9


def test_headers_of_a_later_request_are_timed_too(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHo")
        data, _ = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
    (ok, _, _), refused = responses(data)
    assert ok == 200
    assert refused[0] == 408 and json.loads(refused[2])["error"]["code"] == "header_timeout"


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 100, 1 << 20])
def test_oversize_headers_get_431(server, size):
    with connect(server) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        except OSError:  # the server refuses before it has read 1 MiB and stops reading after a while
            pass
        data, _ = read_until_closed(sock, SLACK_S + 6)
    assert_refused(data, 431, "headers_too_large")


def test_headers_within_the_limit_are_served(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES - 200) +
                     b"\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(sock, SLACK_S)
    assert responses(data)[0][0] == 200


@pytest.mark.parametrize("kind", ["content-length", "chunked"])
def test_stalled_bodies_get_408(server, kind):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(server) as sock:
        if kind == "content-length":  # declares more than it sends
            sock.sendall(head + b"Content-Length: 1000\r\n\r\n{\"model\": ")
        else:  # a chunked body that never ends, though bytes keep coming: the deadline is for the whole body
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            started = time.monotonic()
            for _ in range(100):
                if time.monotonic() - started > BODY_TIMEOUT_S + 0.5:
                    break
                try:
                    sock.sendall(b"1\r\n \r\n")
                except OSError:
                    break
                time.sleep(0.2)
        data, _ = read_until_closed(sock, BODY_TIMEOUT_S + SLACK_S)
    assert_refused(data, 408, "body_timeout")


def test_a_slow_body_within_the_deadline_is_served(server):
    body = json.dumps({"model": SMALL_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                       "temperature": 3}).encode()  # refused by validation: 400 naming the param
    with connect(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        for piece in (body[:10], body[10:20], body[20:]):
            time.sleep(BODY_TIMEOUT_S / 4)
            sock.sendall(piece)
        data, _ = read_until_closed(sock, SLACK_S)
    (status, _, reply), = responses(data)
    assert status == 400 and json.loads(reply)["error"]["param"] == "temperature"


def test_declared_oversize_body_is_refused_before_it_is_read(server):
    with connect(server) as sock:  # Expect: 100-continue; the client waits and never sends the body
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (100 * MAX_BODY_BYTES))
        data, after = read_until_closed(sock, SLACK_S)
    assert_refused(data, 413, "request_too_large")  # no 100 Continue first
    assert after < BODY_TIMEOUT_S


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_body_413_reaches_the_client(server, chunked):
    body = b"x" * (16 * MAX_BODY_BYTES)
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    reply = httpx.post(f"{server.base_url}{CHAT}", content=content, timeout=30,
                       headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert reply.headers["connection"] == "close"


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_body_is_drained_not_reset(server, chunked):
    """A plain close with the body unread makes the kernel reset the connection under the client's send
    (and can discard the response): the lingering close lets the client finish sending and read the 413."""
    body = b"x" * (64 * MAX_BODY_BYTES)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if chunked:
        piece = b"x" * 65536
        payload = head + b"Transfer-Encoding: chunked\r\n\r\n" + (b"10000\r\n" + piece + b"\r\n") * 64 + b"0\r\n\r\n"
    else:
        payload = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    with connect(server) as sock:
        sock.sendall(payload)  # no ConnectionResetError / BrokenPipeError
        data, _ = read_until_closed(sock, SLACK_S)
    (status, headers, reply), = responses(data)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(reply)["error"]["code"] == "request_too_large"


def test_pipelined_requests_are_answered_in_order_and_a_refusal_comes_last(server):
    bad_json = b"{not json"
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s"
                     b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
                     % (len(bad_json), bad_json))
        data, _ = read_until_closed(sock, SLACK_S + 10)
    got = responses(data)
    assert [status for status, _, _ in got] == [200, 400, 200, 413]
    assert json.loads(got[1][2])["error"]["code"] == "invalid_json"
    assert json.loads(got[2][2])["object"] == "list"


def test_keep_alive_and_streams_still_work_and_idle_connections_close(server):
    body = {"model": SMALL_MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 6,
            "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for _ in range(2):  # two streams and a plain request over one pooled connection
            with client.stream("POST", CHAT, json=body) as reply:
                assert reply.status_code == 200 and "connection" not in reply.headers
                lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and len(lines) >= 3
        assert client.get("/health").status_code == 200
    with connect(server) as sock:  # keep-alive, then closed when idle for keepalive_timeout_s
        for _ in range(3):
            assert get_health(sock).startswith(b"HTTP/1.1 200 ")
        data, after = read_until_closed(sock, KEEPALIVE_S + SLACK_S)
    assert data == b"" and after >= KEEPALIVE_S * 0.9


def get_health(sock: socket.socket) -> bytes:
    """GET /health on a kept-alive socket: the whole response."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    for _ in range(100):  # until the whole response is in
        data += sock.recv(65536)
        if data.endswith(b'{"status":"ok"}'):
            break
    return data


def test_a_connection_ends_with_its_last_allowed_response(server):
    with connect(server) as sock:
        for i in range(1, MAX_REQUESTS + 1):
            head = get_health(sock).split(b"\r\n\r\n", 1)[0].lower()
            assert head.startswith(b"http/1.1 200 ") and (b"\r\nconnection: close" in head) == (i == MAX_REQUESTS)
        data, after = read_until_closed(sock, SLACK_S)
    assert data == b"" and after < KEEPALIVE_S  # closed at once, not by the idle timer
    with httpx.Client(base_url=server.base_url, timeout=60) as client:  # a pooled client just reconnects
        assert all(client.get("/health").status_code == 200 for _ in range(2 * MAX_REQUESTS + 1))
