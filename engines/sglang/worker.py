"""One SGLang worker (or gateway) over HTTP: streamed `/generate`, `/abort_request`, info and health.

A worker that refuses connections, fails with a 5xx, hangs or drops a stream is taken out of rotation for
`retry_s`; the health monitor puts it back as soon as `/health_generate` answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from engines.base import EngineError
from engines.sglang.http import ConnectFailed, HTTPClient, HTTPError, ReadTimeout, Response
from engines.sglang.replies import error_message

log = logging.getLogger("lodestar.sglang")
_encode = msgspec.json.Encoder().encode
_JSON = {"Content-Type": "application/json"}


class WorkerUnreachable(EngineError):
    """Nothing was sent: another worker may take the request."""


class Worker:
    def __init__(self, url: str, *, connect_timeout_s: float, read_timeout_s: float, retry_s: float,
                 api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.retry_s = retry_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = HTTPClient(self.url, headers=headers, connect_timeout_s=connect_timeout_s,
                                 read_timeout_s=read_timeout_s)
        self.in_flight = 0
        self.down_until = 0.0  # monotonic time before which the worker is out of rotation

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self, reason: str) -> None:
        if self.up:
            log.warning("SGLang worker %s out of rotation for %.0f s: %s", self.url, self.retry_s, reason)
        self.down_until = time.monotonic() + self.retry_s

    def mark_up(self) -> None:
        if not self.up:
            log.info("SGLang worker %s back in rotation", self.url)
        self.down_until = 0.0

    async def generate(self, body: dict[str, Any], headers: dict[str, str]) -> AsyncGenerator[list[bytes], None]:
        """The `data:` payloads of a streamed `/generate` call, without the closing [DONE], in batches: those
        that arrived together."""
        self.in_flight += 1
        try:
            try:
                async with self.client.request("POST", "/generate", _encode(body), {**_JSON, **headers}) as response:
                    if response.status != 200:
                        raise await self._refusal(response)
                    self.mark_up()
                    async for batch in sse_batches(response.batches()):  # to the body's end: the connection
                        yield batch                                      # is then kept for the next request
            except ConnectFailed as exc:
                self.mark_down(f"cannot connect: {exc}")
                raise WorkerUnreachable(f"the SGLang worker at {self.url} is unreachable", status=503,
                                        code="engine_unavailable", retry_after=self.retry_s) from None
            except ReadTimeout:
                self.mark_down("timed out")
                raise EngineError(f"the SGLang worker at {self.url} did not answer in time", status=504,
                                  code="engine_timeout") from None
            except HTTPError as exc:  # the connection broke mid-stream
                self.mark_down(f"stream broken: {exc}")
                raise EngineError(f"the SGLang worker at {self.url} ended the stream early", status=502,
                                  code="engine_error") from None
        finally:
            self.in_flight -= 1

    async def _refusal(self, response: Response) -> EngineError:
        raw = await response.read()
        try:
            message = error_message(msgspec.json.decode(raw))
        except msgspec.DecodeError:
            message = raw[:500].decode(errors="replace") or f"HTTP {response.status}"
        status = response.status
        if status in (400, 413, 422):
            return EngineError(f"the SGLang worker refused the request: {message}", status=400,
                               code="invalid_request")
        if status == 429 or status == 503:
            return EngineError(f"the SGLang worker is busy: {message}", status=status, code="engine_busy",
                               retry_after=1.0)
        self.mark_down(f"HTTP {status}")
        return EngineError(f"the SGLang worker failed with HTTP {status}: {message}", status=502,
                           code="engine_error")

    async def abort(self, rids: list[str]) -> None:
        """Best effort: a worker that cannot be told will finish the request's tokens on its own."""
        for rid in rids:
            try:
                async with self.client.request("POST", "/abort_request", _encode({"rid": rid}), _JSON,
                                               read_timeout_s=5) as response:
                    await response.read()
            except HTTPError as exc:
                log.debug("abort of %s at %s failed: %s", rid, self.url, exc)

    async def check_health(self) -> bool:
        """`/health_generate`: the worker generated a token (or is busy generating), so it serves."""
        try:
            async with self.client.request("GET", "/health_generate", read_timeout_s=30) as response:
                await response.read()
                status = response.status
        except HTTPError as exc:
            self.mark_down(f"health check failed: {exc}")
            return False
        if status == 200:
            self.mark_up()
            return True
        self.mark_down(f"health check answered HTTP {status}")
        return False

    async def close(self) -> None:
        await self.client.close()


async def sse_batches(reads: AsyncIterator[list[bytes]]) -> AsyncGenerator[list[bytes], None]:
    """The `data:` payloads of an SSE body as bytes, up to `[DONE]` (what follows is read, not yielded): for
    each read (the body pieces that arrived together), the payloads it completes. Split on bytes: no
    decoding of the body to text and back; a line cut across reads is joined once."""
    done = False
    held: list[bytes] = []  # the start of a line whose end has not come yet
    async for pieces in reads:
        piece = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if b"\n" not in piece:
            held.append(piece)
            continue
        if held:
            held.append(piece)
            piece = b"".join(held)
            held = []
        lines = piece.split(b"\n")
        if lines[-1]:
            held.append(lines[-1])
        batch = []
        for line in lines[:-1]:
            if done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
            else:
                batch.append(data)
        if batch:
            yield batch
    last = b"".join(held)
    if not done and last.startswith(b"data:") and last[5:].strip() not in (b"", b"[DONE]"):
        yield [last[5:].strip()]
