"""Server-Sent Events framing for chat-completion chunks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar.response import Stream
from litestar.types import Receive, Scope, Send

from core.errors import APIError
from core.replies import ChatCompletionChunk, encode
from engines.base import EngineError

log = logging.getLogger("lodestar.streaming")

DONE = b"data: [DONE]\n\n"


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def sse_stream(batches: AsyncIterator[list[ChatCompletionChunk]], request_id: str) -> AsyncIterator[bytes]:
    """Frame chunks as SSE, each batch in one piece (one write); a failure after the headers went out becomes
    an error event, then [DONE]."""
    try:
        async for batch in batches:
            yield b"".join([b"data: " + encode(chunk) + b"\n\n" for chunk in batch])
    except EngineError as exc:
        yield sse(encode(exc.as_api_error().body()))
    except APIError as exc:
        yield sse(encode(exc.body()))
    except Exception:
        log.exception("stream failed in request %s", request_id)
        yield sse(encode(APIError(500, f"The server had an error while streaming (request id {request_id})",
                                  code="internal_error").body()))
    yield DONE


class GuardedStream(Stream):
    """A Stream that calls `on_end` once its ASGI response is over, however that went. A generator's `finally`
    is not enough: when the body never starts (a server whose send raised at the headers, a cancellation before
    the body's first step) the generator has no frame to unwind."""

    __slots__ = ("on_end",)

    def __init__(self, content: AsyncIterator[bytes], *, on_end: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_end = on_end

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return _Ending(super().to_asgi_response(*args, **kwargs), self.on_end)


class _Ending:
    __slots__ = ("inner", "on_end")

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self.inner = inner
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.on_end()
