"""SessionStore (SQLite, WAL) and SessionManager (one request at a time per session, expiry, ids)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from core.errors import APIError
from sessions.manager import SessionManager, check_session_id, engine_key, owner_of
from sessions.store import SessionStore, Transcript


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    s = SessionStore(tmp_path / "data" / "sessions.sqlite3")
    yield s
    s.close()


def transcript(owner: str = "owner", session_id: str = "s1", **kw) -> Transcript:
    base = dict(
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "hi ü"}], "name": None},
                  {"role": "assistant", "content": None, "reasoning_content": "hm",
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "f", "arguments": '{"a": 1}'}}]}],
        token_ids=[0, 1, 151645, 199999, 200000], turns=3, prompt_tokens=120, completion_tokens=40,
        cached_tokens=77, created=1000.5, updated=time.time())
    base.update(kw)
    return Transcript(owner=owner, session_id=session_id, **base)


# --- SessionStore ------------------------------------------------------------------------------------


def test_round_trip(store: SessionStore) -> None:
    t = transcript()
    store.save(t)
    assert store.load("owner", "s1") == t


def test_missing_is_none(store: SessionStore) -> None:
    assert store.load("owner", "nope") is None


def test_save_replaces(store: SessionStore) -> None:
    store.save(transcript())
    newer = transcript(messages=[{"role": "user", "content": "x"}], token_ids=[5], turns=4)
    store.save(newer)
    assert store.load("owner", "s1") == newer


def test_owner_isolation(store: SessionStore) -> None:
    a = transcript(owner="a", token_ids=[1])
    b = transcript(owner="b", token_ids=[2])
    store.save(a)
    assert store.load("b", "s1") is None
    store.save(b)
    assert store.load("a", "s1") == a and store.load("b", "s1") == b
    assert store.delete("a", "s1") is True
    assert store.load("a", "s1") is None and store.load("b", "s1") == b


def test_delete(store: SessionStore) -> None:
    store.save(transcript())
    assert store.delete("owner", "s1") is True
    assert store.delete("owner", "s1") is False
    assert store.load("owner", "s1") is None


def test_expire_removes_only_idle(store: SessionStore) -> None:
    now = time.time()
    store.save(transcript(session_id="old", updated=now - 3600))
    store.save(transcript(session_id="fresh", updated=now))
    assert store.expire(60) == [("owner", "old")]
    assert store.load("owner", "old") is None
    assert store.load("owner", "fresh") is not None
    assert store.expire(60) == []


def test_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    first = SessionStore(path)
    t = transcript()
    first.save(t)
    second = SessionStore(path)  # another process's view, while the first is still open
    assert second.load("owner", "s1") == t
    first.close()
    second.close()
    third = SessionStore(path)
    assert third.load("owner", "s1") == t
    third.close()


def test_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    SessionStore(path).close()
    with sqlite3.connect(path) as db:  # journal_mode=WAL is persistent in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- SessionManager ----------------------------------------------------------------------------------


def manager(store: SessionStore, *, idle: float = 3600, busy: float = 5.0) -> SessionManager:
    return SessionManager(store, idle_timeout_s=idle, busy_timeout_s=busy)


def test_second_acquire_waits_for_release(store: SessionStore) -> None:
    async def main() -> None:
        m = manager(store)
        first = await m.acquire("o", "s")
        second = asyncio.create_task(m.acquire("o", "s"))
        await asyncio.sleep(0.05)
        assert not second.done()
        await first.commit(transcript(owner="o", session_id="s"))
        first.release()
        first.release()  # idempotent
        lease = await asyncio.wait_for(second, 2)
        assert lease.transcript is not None and lease.transcript.turns == 3  # sees the committed turn
        lease.release()

    asyncio.run(main())


def test_busy_session_is_409(store: SessionStore) -> None:
    async def main() -> None:
        m = manager(store, busy=0.05)
        first = await m.acquire("o", "s")
        with pytest.raises(APIError) as e:
            await m.acquire("o", "s")
        assert e.value.status == 409 and e.value.code == "session_busy"
        first.release()
        (await m.acquire("o", "s")).release()  # free again after the release

    asyncio.run(main())


def test_sessions_do_not_block_each_other(store: SessionStore) -> None:
    async def main() -> None:
        m = manager(store, busy=0.05)
        a = await m.acquire("o", "a")
        b = await m.acquire("o", "b")  # another id
        c = await m.acquire("p", "a")  # the same id under another owner
        for lease in (a, b, c):
            lease.release()

    asyncio.run(main())


async def _wait_for_312(aw, timeout):  # Python 3.12's wait_for: no extra task, no yield on a free lock
    async with asyncio.timeout(timeout):
        return await aw


@pytest.mark.parametrize("wait_for", ["native", "3.12"])
def test_waiting_lock_survives_lock_table_pruning(store: SessionStore, monkeypatch: pytest.MonkeyPatch,
                                                  wait_for: str) -> None:
    """A request woken by a release, but not yet running, still holds its session against newcomers."""
    if wait_for == "3.12":
        monkeypatch.setattr(asyncio, "wait_for", _wait_for_312)

    async def main() -> None:
        m = manager(store, busy=0.2)
        for i in range(1023):  # with "s" and "other", one more than _expire keeps
            (await m.acquire("o", f"x{i}")).release()
        first = await m.acquire("o", "s")
        waiter = asyncio.create_task(m.acquire("o", "s"))
        await asyncio.sleep(0.01)
        first.release()  # the waiter is woken but has not run yet
        (await m.acquire("o", "other")).release()  # prunes the lock table
        second = await waiter
        with pytest.raises(APIError) as e:
            await m.acquire("o", "s")
        assert e.value.code == "session_busy"
        second.release()

    asyncio.run(main())


def test_expired_transcript_is_forgotten(store: SessionStore) -> None:
    async def main() -> None:
        m = manager(store, idle=60)
        store.save(transcript(owner="o", session_id="old", updated=time.time() - 120))
        store.save(transcript(owner="o", session_id="fresh"))
        assert await m.load("o", "old") is None
        assert store.load("o", "old") is None  # deleted, not only hidden
        assert await m.load("o", "fresh") is not None

        tiny = manager(store, idle=0.001)
        store.save(transcript(owner="o", session_id="old", updated=time.time() - 1))
        lease = await tiny.acquire("o", "old")
        assert lease.transcript is None
        lease.release()
        assert store.load("o", "old") is None

    asyncio.run(main())


@pytest.mark.parametrize("value", ["a", "A-b_c.d:e", "0123", "x" * 128])
def test_valid_session_ids(value: str) -> None:
    assert check_session_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "ü", "a/b", "a\n"])
def test_invalid_session_ids(value: str) -> None:
    with pytest.raises(APIError) as e:
        check_session_id(value)
    assert e.value.status == 400 and e.value.code == "invalid_session_id"
    assert e.value.param == "X-Session-ID"


def test_owner_of() -> None:
    assert owner_of("key-a") == owner_of("key-a")
    assert owner_of("key-a") != owner_of("key-b")
    assert owner_of(None) == owner_of("")
    assert "key-a" not in owner_of("key-a") and len(owner_of("key-a")) == 32


def test_deleted_and_expired_sessions_are_forgotten_by_the_engine(store: SessionStore) -> None:
    forgotten: list[str] = []
    manager = SessionManager(store, idle_timeout_s=60, busy_timeout_s=1, on_forget=forgotten.append)
    store.save(transcript(session_id="gone"))
    store.save(transcript(session_id="idle", updated=time.time() - 3600))

    async def main() -> None:
        await manager.delete("owner", "gone")
        lease = await manager.acquire("owner", "other")  # runs the periodic expiry
        lease.release()

    asyncio.run(main())
    assert forgotten == [engine_key("owner", "gone"), engine_key("owner", "idle")]
