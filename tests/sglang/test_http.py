"""engines/sglang/http.py against small raw servers: a chunked body read as it arrives, a kept-alive
connection the server closed while idle replaced once, a body cut short, a silent server, no server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from engines.sglang.http import ConnectFailed, HTTPClient, HTTPError, ReadTimeout
from tests.conftest import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def with_server(handler: Handler, scenario: Callable[[HTTPClient], Awaitable[None]],
                      read_timeout_s: float = 5) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HTTPClient(f"http://127.0.0.1:{port}", headers={}, connect_timeout_s=2, read_timeout_s=read_timeout_s)
    try:
        await scenario(client)
    finally:
        await client.close()
        server.close()


def test_a_chunked_body_arrives_whole_and_the_connection_is_kept() -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(CHUNKED + chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(chunk(b"data: 3\n\n") + b"0\r\n\r\n")
            await writer.drain()

    async def scenario(client: HTTPClient) -> None:
        for _ in range(3):
            async with client.request("POST", "/generate", b"{}") as response:
                assert response.status == 200
                reads = [batch async for batch in response.batches()]
            assert b"".join(p for batch in reads for p in batch) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
            assert len(reads) >= 2  # what came together came as one read
        assert len(connections) == 1

    asyncio.run(with_server(handler, scenario))


def test_a_kept_alive_connection_the_server_closed_is_replaced() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # without saying so: the client kept the connection

    async def scenario(client: HTTPClient) -> None:
        for _ in range(2):
            async with client.request("GET", "/health_generate") as response:
                assert await response.read() == b"ok"
            await asyncio.sleep(0.05)

    asyncio.run(with_server(handler, scenario))


def test_a_body_cut_short_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        await writer.drain()
        writer.close()

    async def scenario(client: HTTPClient) -> None:
        async with client.request("POST", "/generate", b"{}") as response:
            with pytest.raises(HTTPError, match="closed before the response was complete"):
                [batch async for batch in response.batches()]

    asyncio.run(with_server(handler, scenario))


def test_a_silent_server_is_a_read_timeout_and_no_server_a_connect_failure() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def scenario(client: HTTPClient) -> None:
        with pytest.raises(ReadTimeout):
            async with client.request("GET", "/health"):
                pass

    asyncio.run(with_server(handler, scenario, read_timeout_s=0.2))

    async def nobody() -> None:
        client = HTTPClient(f"http://127.0.0.1:{free_port()}", headers={}, connect_timeout_s=2, read_timeout_s=1)
        with pytest.raises(ConnectFailed):
            async with client.request("GET", "/health"):
                pass
    asyncio.run(nobody())


def test_the_read_timeout_counts_silence_not_the_whole_body() -> None:
    """A body that trickles in for longer than the timeout is read whole; one that stops mid-way times out
    (here with a shorter timeout than the connection's first request had)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(CHUNKED)
            for i in range(6):  # 0.6 s in all, against a 0.3 s timeout
                writer.write(chunk(b"data: %d\n\n" % i))
                await writer.drain()
                await asyncio.sleep(0.1)
            if b"/stall" in request:
                await asyncio.sleep(5)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def scenario(client: HTTPClient) -> None:
        async with client.request("POST", "/generate", b"{}") as response:
            assert len(b"".join([piece async for batch in response.batches() for piece in batch])) == 6 * 9
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout):
            async with client.request("POST", "/stall", b"{}", read_timeout_s=0.15) as response:
                async for _ in response.batches():
                    pass
        assert 0.6 < loop.time() - started < 2.0  # the server stalls for 5 s

    asyncio.run(with_server(handler, scenario, read_timeout_s=0.3))
