"""GET and DELETE /v1/sessions/{id}: a session's transcript and totals, or forgetting it."""

from __future__ import annotations

from litestar import Request, Response, delete, get
from litestar.datastructures import State
from litestar.params import FromPath

from app.auth import caller_of
from app.resources import Session, SessionDeleted
from core.errors import APIError
from core.replies import encode
from sessions.manager import check_session_id
from store.records import Transcript


def _not_found(session_id: str) -> APIError:
    return APIError(404, f"No session '{session_id}' for this API key (unknown, deleted or expired)",
                    param="session_id", code="session_not_found")


def session_body(t: Transcript) -> Session:
    return Session(id=t.session_id, created=int(t.created), updated=int(t.updated), turns=t.turns,
                   tokens=len(t.token_ids), prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
                   cached_tokens=t.cached_tokens, messages=t.messages)


@get("/v1/sessions/{session_id:str}")
async def get_session(session_id: FromPath[str], request: Request, state: State) -> Response[bytes]:
    check_session_id(session_id)
    transcript = await state.sessions.load(caller_of(request, state).owner, session_id)
    if transcript is None:
        raise _not_found(session_id)
    return Response(encode(session_body(transcript)), media_type="application/json")


@delete("/v1/sessions/{session_id:str}", status_code=200)
async def delete_session(session_id: FromPath[str], request: Request, state: State) -> Response[bytes]:
    check_session_id(session_id)
    lease = await state.sessions.acquire(caller_of(request, state).owner, session_id)  # not while a turn is running
    try:
        if lease.transcript is None or not await state.sessions.delete(lease.owner, session_id):
            raise _not_found(session_id)
    finally:
        lease.release()
    return Response(encode(SessionDeleted(id=session_id)), media_type="application/json")
