"""Sessions keyed by (API key, X-Session-ID): validation, one request at a time per session across every
process and host that shares the store, expiry."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import APIError
from store.base import Store, StoreUnavailable
from store.records import Transcript

T = TypeVar("T")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADER = "X-Session-ID"
_POLL_S = (0.005, 0.2)  # first and longest wait between tries for a session another process holds


def check_session_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise APIError(400, f"'{HEADER}' must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
                       param=HEADER, code="invalid_session_id")
    return value


def engine_key(owner: str, session_id: str) -> str:
    """How engines know a session: a routing hint and the owner of cached prefixes kept in preference."""
    return f"{owner}:{session_id}"


def owner_of(bearer: str | None) -> str:
    """Sessions belong to the key that made them: the same id under another key is another session."""
    return hashlib.sha256((bearer or "").encode()).hexdigest()[:32]


def _hold_name(owner: str, session_id: str) -> str:
    return f"session\0{owner}\0{session_id}"


def _busy(session_id: str) -> APIError:
    return APIError(409, f"Another request on session '{session_id}' is still running; retry when it has "
                    "finished", param=HEADER, code="session_busy")


async def reach(call: Awaitable[T]) -> T:
    """A store call on behalf of a session: an unreachable store is a 503 that says so."""
    try:
        return await call
    except StoreUnavailable as exc:
        raise APIError(503, f"The session store is unreachable, so '{HEADER}' cannot be served now ({exc}); "
                       "requests without it still are", code="store_unavailable", type="server_error") from None


@dataclass(slots=True)
class Lease:
    """One request's hold on its session: the transcript as stored (None: a new session)."""

    manager: SessionManager
    owner: str
    session_id: str
    transcript: Transcript | None
    _lock: asyncio.Lock
    _released: bool = False

    async def commit(self, transcript: Transcript) -> None:
        transcript.updated = time.time()
        await reach(self.manager.store.save_transcript(transcript))
        self.transcript = transcript

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._lock.release()
            self.manager.store.give_back(_hold_name(self.owner, self.session_id))


class SessionManager:
    def __init__(self, store: Store, *, idle_timeout_s: float, busy_timeout_s: float,
                 on_forget: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.on_forget = on_forget  # told the engine key of each deleted or expired session
        self.idle_timeout_s = idle_timeout_s
        self.busy_timeout_s = busy_timeout_s
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}  # this process's requests queue here first
        self._waiting: dict[tuple[str, str], int] = {}  # requests inside acquire's wait, per session
        self._last_expiry = 0.0

    async def acquire(self, owner: str, session_id: str) -> Lease:
        """Wait for the session's other request, in this process or any other, to finish (up to
        busy_timeout_s, else 409)."""
        deadline = time.monotonic() + self.busy_timeout_s
        lock = await self._local_turn(owner, session_id)
        try:
            await self._hold(owner, session_id, deadline)
        except BaseException:
            lock.release()
            raise
        lease = Lease(self, owner, session_id, None, lock)
        try:
            await self._expire()
            lease.transcript = await self.load(owner, session_id)
        except BaseException:
            lease.release()
            raise
        return lease

    async def _local_turn(self, owner: str, session_id: str) -> asyncio.Lock:
        key = (owner, session_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            await asyncio.wait_for(lock.acquire(), self.busy_timeout_s)
        except TimeoutError:
            raise _busy(session_id) from None
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
        return lock

    async def _hold(self, owner: str, session_id: str, deadline: float) -> None:
        """Take the session from every other process: polled, as a hold cannot be waited on."""
        pause = _POLL_S[0]
        while not await reach(self.store.hold(_hold_name(owner, session_id))):
            if time.monotonic() + pause > deadline:
                raise _busy(session_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])

    async def load(self, owner: str, session_id: str) -> Transcript | None:
        transcript = await reach(self.store.load_transcript(owner, session_id))
        if transcript is not None and transcript.updated < time.time() - self.idle_timeout_s:
            await self.delete(owner, session_id)
            return None
        return transcript

    async def delete(self, owner: str, session_id: str) -> bool:
        deleted = await reach(self.store.delete_transcript(owner, session_id))
        self._forget(owner, session_id)
        return deleted

    def _forget(self, owner: str, session_id: str) -> None:
        if self.on_forget is not None:
            self.on_forget(engine_key(owner, session_id))

    async def _expire(self) -> None:
        now = time.time()
        if now - self._last_expiry > min(60.0, self.idle_timeout_s):
            self._last_expiry = now
            for owner, session_id in await reach(self.store.expire_transcripts(now - self.idle_timeout_s)):
                self._forget(owner, session_id)
        # Locks of sessions nobody holds or waits for are dropped, so the table stays small. A released lock
        # whose waiter has been woken but not yet run is unlocked, yet must stay: hence `_waiting`.
        if len(self._locks) > 1024:
            self._locks = {k: v for k, v in self._locks.items() if v.locked() or k in self._waiting}
