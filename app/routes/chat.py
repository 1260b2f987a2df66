"""POST /v1/chat/completions (and its alias /api/v3/inference/chat/completions, a provider's path)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.response import Stream

from app.auth import Caller, caller_of
from app.limits import Permit
from app.logs import REQUEST_ID
from app.metrics import Metrics
from app.routes.served import served_model
from app.streaming import GuardedStream, sse_stream
from chat import pipeline, responses
from chat.pipeline import ServedModel
from chat.sessions import SessionTurn, merge, next_transcript
from chat.validation import resolve_model, validate_request
from core.errors import APIError, clip, from_decode_error
from core.protocol import ChatCompletionRequest, request_decoder
from core.replies import encode
from engines.base import EngineError
from sessions.manager import HEADER, Lease, check_session_id, engine_key

CHAT_PATHS = ["/v1/chat/completions", "/api/v3/inference/chat/completions"]


def is_json_media_type(value: str) -> bool:
    """application/json or application/<name>+json, any case, with no charset but UTF-8 (RFC 8259: JSON
    exchanged between systems is UTF-8, and that is all the decoder reads)."""
    media_type, _, params = value.partition(";")
    kind, _, subtype = media_type.strip().lower().partition("/")
    if kind != "application" or not (subtype == "json" or (subtype.endswith("+json") and len(subtype) > 5)):
        return False
    for param in params.split(";") if params else ():
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "charset" and param_value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def check_content_type(request: Request) -> None:
    """Refuse (415) a body that says it is not JSON: form-encoded (curl -d without -H), multipart, text/plain.
    A request without Content-Type is read as JSON (docs/parameters.md#request-bodies)."""
    values = request.headers.getall("content-type", [])
    if not values:
        return
    value = ", ".join(values)  # several Content-Type lines make one value, and no valid media type
    if not is_json_media_type(value):
        raise APIError(415, f"Unsupported Content-Type '{clip(value)}': this route reads a JSON body; send it with "
                       "'Content-Type: application/json'.", code="unsupported_media_type")


async def json_body(request: Request) -> ChatCompletionRequest:
    """The chat-completions body of a request: its Content-Type checked, then decoded."""
    check_content_type(request)
    return decode_body(await request.body())


def decode_body(body: bytes) -> ChatCompletionRequest:
    try:
        return request_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None
    except RecursionError:  # msgspec's own guard against hostile nesting
        raise APIError(400, "The JSON body is nested too deeply", code="invalid_json") from None
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 inside strings only when it builds them
        raise APIError(400, f"The body is not valid UTF-8 ({exc.reason} in a string)",
                       code="invalid_json") from None


@post(CHAT_PATHS, status_code=200)
async def chat_completions(request: Request, state: State) -> Response[bytes] | Stream:
    req = await json_body(request)
    served = served_model(state)
    model_id = resolve_model(req.model, served.engine.model_info)
    validate_request(req, state.settings, served.engine.model_info)
    session_id = request.headers.get(HEADER)
    if session_id is not None:
        check_session_id(session_id)
    scope = await RequestScope.enter(state, caller_of(request, state), session_id, req)
    try:
        response = await _respond(req, state, served, model_id, scope)
    except BaseException:
        scope.release()
        raise
    if not isinstance(response, Stream):
        scope.release()
    return response


class RequestScope:
    """What one chat request holds while it runs: its key's permit (the per-key limits) and, with
    X-Session-ID, its session's lease (one request per session) and the turn it adds. Acquired together;
    the turn stored once; the run metered once when it has ended; released together, once, by whichever
    comes first: the response's end, the stream's end or a failure."""

    __slots__ = ("caller", "permit", "lease", "turn", "_stored", "_metered", "_released")

    def __init__(self, caller: Caller, permit: Permit, lease: Lease | None, turn: SessionTurn | None) -> None:
        self.caller, self.permit, self.lease, self.turn = caller, permit, lease, turn
        self._stored = self._metered = self._released = False

    @classmethod
    async def enter(cls, state: State, caller: Caller, session_id: str | None,
                    req: ChatCompletionRequest) -> RequestScope:
        permit = await state.limits.admit(caller.tenant)  # 429 here when the key is over a limit
        try:
            lease = await state.sessions.acquire(caller.owner, session_id) if session_id is not None else None
        except BaseException:
            permit.release()
            raise
        return cls(caller, permit, lease, merge(lease.transcript, req.messages) if lease is not None else None)

    @property
    def session_key(self) -> str | None:
        return engine_key(self.lease.owner, self.lease.session_id) if self.lease is not None else None

    async def store(self, run: responses.Run) -> None:
        """The session stage: the turn and the reply the client received go into the session, once."""
        if self._stored or self.lease is None or self.turn is None:
            return
        self._stored = True
        reply = run.reply()
        if reply is not None:
            lease = self.lease
            await lease.commit(next_transcript(lease.owner, lease.session_id, lease.transcript, self.turn,
                                               reply.message, reply.token_ids, reply.usage))

    def meter(self, run: responses.Run, metrics: Metrics) -> None:
        """The run has ended (finished, failed or cut off): its usage counts against the key and in the
        metrics, with its timings."""
        if self._metered:
            return
        self._metered = True
        usage = run.usage()
        self.permit.finished(usage)
        metrics.record_request(run.queued_s, run.token_gaps, usage)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.permit.release()
        if self.lease is not None:
            self.lease.release()


async def _respond(req: ChatCompletionRequest, state: State, served: ServedModel, model_id: str,
                   scope: RequestScope) -> Response[bytes] | Stream:
    origin = pipeline.Origin(tenant=scope.caller.tenant, session_key=scope.session_key)
    plan = await pipeline.plan_request(req, state.settings, served, model_id, state.grammar_checker,
                                       session=scope.turn, origin=origin)
    REQUEST_ID.set(plan.request_id)  # from here on the request's log lines carry the id the client is given
    headers = {"X-Request-ID": plan.request_id}
    if scope.lease is not None:
        headers[HEADER] = scope.lease.session_id
    try:  # admission errors (queue full) still get a real HTTP status
        run = responses.Run(plan, served)
    except EngineError as exc:
        raise exc.as_api_error() from None
    if plan.stream:
        return GuardedStream(sse_stream(_stored_and_released(run, scope, state.metrics), plan.request_id),
                             on_end=scope.release,
                             media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        completion = await responses.complete(run)
    except EngineError as exc:
        raise exc.as_api_error() from None
    finally:
        scope.meter(run, state.metrics)
    await scope.store(run)
    return Response(encode(completion), media_type="application/json", headers=headers)


async def _stored_and_released(run: responses.Run, scope: RequestScope,
                               metrics: Metrics) -> AsyncGenerator[Any, None]:
    """The run's chunks. The turn is stored before the client sees the end (a reply it got is never missing
    from its session), or, if the stream ends early, with what was sent; the run is metered and the scope
    released once the chunks have ended, before [DONE] goes out (a client that sends its session's next
    turn on [DONE] finds the session free)."""
    batches = responses.stream(run)
    try:
        async for batch in batches:
            if run.done:
                await scope.store(run)
            yield batch
    finally:  # a client that went away cancels the stream: close it and store shielded, then release
        with anyio.CancelScope(shield=True):
            await batches.aclose()
            await scope.store(run)
        scope.meter(run, metrics)
        scope.release()
