"""Server-Sent Events framing for chat-completion chunks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from app.errors import APIError
from app.protocol import ChatCompletionChunk, encode
from engines.base import EngineError

log = logging.getLogger("lodestar.streaming")

DONE = b"data: [DONE]\n\n"


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def sse_stream(chunks: AsyncIterator[ChatCompletionChunk], request_id: str) -> AsyncIterator[bytes]:
    """Frame chunks as SSE; a failure after the headers went out becomes an error event, then [DONE]."""
    try:
        async for chunk in chunks:
            yield sse(encode(chunk))
    except EngineError as exc:
        yield sse(encode(APIError(exc.status, str(exc), code=exc.code).body()))
    except APIError as exc:
        yield sse(encode(exc.body()))
    except Exception:
        log.exception("stream failed in request %s", request_id)
        yield sse(encode(APIError(500, f"The server had an error while streaming (request id {request_id})",
                                  code="internal_error").body()))
    yield DONE
