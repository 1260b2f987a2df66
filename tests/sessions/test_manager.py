"""SessionManager: one request at a time per session (in this process and, through the store's holds, in
any other), expiry, ids. The store itself: tests/store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from core.errors import APIError
from sessions.manager import SessionManager, check_session_id, engine_key, owner_of
from store.base import Store, open_store
from store.records import Transcript


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "sessions.sqlite3"


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[Store]:
    store = await open_store(None, path, timeout_s=5, pool_size=1)
    try:
        yield store
    finally:
        await store.close()


def transcript(owner: str = "owner", session_id: str = "s1", **kw) -> Transcript:
    base = dict(messages=[{"role": "user", "content": "hi"}], token_ids=[0, 1, 151645], turns=3,
                prompt_tokens=120, completion_tokens=40, cached_tokens=77, created=1000.5, updated=time.time())
    base.update(kw)
    return Transcript(owner=owner, session_id=session_id, **base)


def manager(store: Store, *, idle: float = 3600, busy: float = 5.0) -> SessionManager:
    return SessionManager(store, idle_timeout_s=idle, busy_timeout_s=busy)


def test_second_acquire_waits_for_release(path: Path) -> None:
    async def main() -> None:
        async with opened(path) as store:
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


def test_busy_session_is_409(path: Path) -> None:
    async def main() -> None:
        async with opened(path) as store:
            m = manager(store, busy=0.05)
            first = await m.acquire("o", "s")
            with pytest.raises(APIError) as e:
                await m.acquire("o", "s")
            assert e.value.status == 409 and e.value.code == "session_busy"
            first.release()
            (await m.acquire("o", "s")).release()  # free again after the release

    asyncio.run(main())


def test_sessions_do_not_block_each_other(path: Path) -> None:
    async def main() -> None:
        async with opened(path) as store:
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
def test_waiting_lock_survives_lock_table_pruning(path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  wait_for: str) -> None:
    """A request woken by a release, but not yet running, still holds its session against newcomers."""
    if wait_for == "3.12":
        monkeypatch.setattr(asyncio, "wait_for", _wait_for_312)

    async def main() -> None:
        async with opened(path) as store:
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


def test_expired_transcript_is_forgotten(path: Path) -> None:
    async def main() -> None:
        async with opened(path) as store:
            m = manager(store, idle=60)
            await store.save_transcript(transcript(owner="o", session_id="old", updated=time.time() - 120))
            await store.save_transcript(transcript(owner="o", session_id="fresh"))
            assert await m.load("o", "old") is None
            assert await store.load_transcript("o", "old") is None  # deleted, not only hidden
            assert await m.load("o", "fresh") is not None

            tiny = manager(store, idle=0.001)
            await store.save_transcript(transcript(owner="o", session_id="old", updated=time.time() - 1))
            lease = await tiny.acquire("o", "old")
            assert lease.transcript is None
            lease.release()
            assert await store.load_transcript("o", "old") is None

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


def test_deleted_and_expired_sessions_are_forgotten_by_the_engine(path: Path) -> None:
    forgotten: list[str] = []

    async def main() -> None:
        async with opened(path) as store:
            manager = SessionManager(store, idle_timeout_s=60, busy_timeout_s=1, on_forget=forgotten.append)
            await store.save_transcript(transcript(session_id="gone"))
            await store.save_transcript(transcript(session_id="idle", updated=time.time() - 3600))
            await manager.delete("owner", "gone")
            lease = await manager.acquire("owner", "other")  # runs the periodic expiry
            lease.release()

    asyncio.run(main())
    assert forgotten == [engine_key("owner", "gone"), engine_key("owner", "idle")]


_HOLDER = """
import asyncio, sys
from pathlib import Path
from sessions.manager import SessionManager
from store.base import open_store

async def main():
    store = await open_store(None, Path(sys.argv[1]), timeout_s=5, pool_size=1)
    lease = await SessionManager(store, idle_timeout_s=60, busy_timeout_s=1).acquire("o", "s")
    print("held", flush=True)
    sys.stdin.readline()
    lease.release()
    await asyncio.sleep(0.3)
    print("released", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_session_held_by_another_process_waits_then_is_served(path: Path) -> None:
    """Two processes on one SQLite file: the second waits for the first's request (then gets it), or 409s."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"

        async def main() -> float:
            async with opened(path) as store:
                with pytest.raises(APIError) as e:
                    await manager(store, busy=0.2).acquire("o", "s")
                assert e.value.status == 409 and e.value.code == "session_busy"
                waiting = asyncio.create_task(manager(store, busy=10).acquire("o", "s"))
                await asyncio.sleep(0.1)
                assert not waiting.done()
                started = time.monotonic()
                holder.stdin.write("\n")
                holder.stdin.flush()
                lease = await waiting
                lease.release()
                return time.monotonic() - started
        waited = asyncio.run(main())
        assert waited < 2
    finally:
        holder.kill()
        holder.wait(10)
