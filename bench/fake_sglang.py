"""bench/relay.py's fake SGLang worker: SGLang's info endpoints and an instant (or paced) `/generate` stream
on a raw HTTP/1.1 connection, so that the CPU a relay run measures is Lodestar's."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class FakeWorker(asyncio.Protocol):
    """SGLang's info endpoints and an instant `/generate` stream, on a raw HTTP/1.1 connection. A reply is
    ready at once: its events (one HTTP chunk each, as SGLang sends them) are handed to the socket in one
    write, and the frames are built from pieces encoded at start-up, so the worker's own CPU (and so its pace)
    does not depend on how many streams it serves. `/bench_stats` counts the connections the relay opened:
    a relay that keeps its worker connections alive opens few."""

    connections = 0

    def __init__(self, tokens: int, incremental: bool, token_id: int, pace_s: float) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.tokens, self.incremental, self.pace_s = tokens, incremental, pace_s
        self.url, self.body = b"", b""
        self.transport: asyncio.Transport | None = None
        self.ids = _ids_pieces(tokens, incremental, token_id)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        FakeWorker.connections += 1

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.body = b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?", 1)[0]
        if path == b"/generate":
            pieces = self._generate(json.loads(self.body))
            if self.pace_s:
                asyncio.get_running_loop().create_task(self._paced(pieces))
            else:
                self.transport.write(b"".join(pieces))
            return
        if path in (b"/model_info", b"/get_model_info"):
            payload: dict[str, Any] = {"model_path": "fake", "served_model_name": "fake-model", "is_generation": True}
        elif path == b"/bench_stats":
            payload = {"connections": FakeWorker.connections}
        elif path in (b"/server_info", b"/get_server_info"):
            payload = {"context_length": None, "grammar_backend": "llguidance",
                       "incremental_streaming_output": self.incremental, "enable_deterministic_inference": False}
        else:
            payload = {}
        data = json.dumps(payload).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(data), data))

    async def _paced(self, pieces: list[bytes]) -> None:
        """One event per pace, as a GPU worker sends them when the relay keeps up with it."""
        assert self.transport is not None
        self.transport.write(pieces[0])
        for piece in pieces[1:]:
            await asyncio.sleep(self.pace_s)
            if self.transport.is_closing():
                return
            self.transport.write(piece)

    def _generate(self, req: dict[str, Any]) -> list[bytes]:
        meta = b'"meta_info": {"id": %s, "prompt_tokens": %d, "cached_tokens": 0, ' % (
            json.dumps(req["rid"]).encode(), len(req.get("input_ids") or []))
        out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
        for i, ids in enumerate(self.ids, 1):
            finish = b'{"type": "length", "length": %d}' % i if i == self.tokens else b"null"
            frame = b'data: {"text": "", "output_ids": %s, "index": 0, %s"completion_tokens": %d, ' \
                    b'"finish_reason": %s}}\n\n' % (ids, meta, i, finish)
            out.append(b"%x\r\n%s\r\n" % (len(frame), frame))
        out[-1] += b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        return out


def _ids_pieces(tokens: int, incremental: bool, token_id: int) -> list[bytes]:
    """Each event's `output_ids`: only the new token, or all of them so far (SGLang's default)."""
    return [json.dumps([token_id] if incremental else [token_id] * i).encode() for i in range(1, tokens + 1)]


def serve_fake(port: int, tokens: int, incremental: bool, token_id: int, pace_s: float) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: FakeWorker(tokens, incremental, token_id, pace_s), "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(serve())
