"""POST /v1/chat/completions (and seed 003's /api/v3/inference/chat/completions)."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.response import Stream

from app.errors import APIError, from_decode_error
from app.protocol import encode, request_decoder
from app.routes.health import served_model
from app.streaming import sse_stream
from app.validation import resolve_model, validate_request
from chat import pipeline
from engines.base import EngineError

CHAT_PATHS = ["/v1/chat/completions", "/api/v3/inference/chat/completions"]


def engine_error(exc: EngineError) -> APIError:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
    return APIError(exc.status, str(exc), code=exc.code, headers=headers)


@post(CHAT_PATHS, status_code=200)
async def chat_completions(request: Request, state: State) -> Response[bytes] | Stream:
    body = await request.body()
    try:
        req = request_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None
    except RecursionError:  # msgspec's own guard against hostile nesting
        raise APIError(400, "The JSON body is nested too deeply", code="invalid_json") from None
    served = served_model(state)
    model_id = resolve_model(req.model, served.engine.model_info)
    validate_request(req, state.settings, served.engine.model_info)
    plan = await pipeline.plan_request(req, state.settings, served, model_id)
    headers = {"X-Request-ID": plan.request_id}
    if plan.stream:
        try:  # admission errors (queue full) still get a real HTTP status
            chunks = pipeline.stream(plan, served)
        except EngineError as exc:
            raise engine_error(exc) from None
        return Stream(sse_stream(chunks, plan.request_id), media_type="text/event-stream",
                      headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        completion = await pipeline.complete(plan, served)
    except EngineError as exc:
        raise engine_error(exc) from None
    return Response(encode(completion), media_type="application/json", headers=headers)
