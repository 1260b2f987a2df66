"""The store's contract, run against both backends (SQLite file; throwaway PostgreSQL): transcripts,
holds, rate windows, usage totals, migrations."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from store.base import Store, open_store
from store.records import RateRefusal, Transcript, UsageTotals

T = TypeVar("T")


async def opened(url: str) -> Store:
    return await open_store(url, Path("/nonexistent"), timeout_s=10, pool_size=4)


def run(url: str, scenario: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await opened(url)
        try:
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


def transcript(owner: str = "owner", session_id: str = "s1", **kw: object) -> Transcript:
    base: dict[str, object] = dict(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi ü"}], "name": None},
                  {"role": "assistant", "content": None, "reasoning_content": "hm",
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "f", "arguments": '{"a": 1}'}}]}],
        token_ids=[0, 1, 151645, 199999, 2_000_000_000], turns=3, prompt_tokens=120, completion_tokens=40,
        cached_tokens=77, created=1000.5, updated=time.time())
    base.update(kw)
    return Transcript(owner=owner, session_id=session_id, **base)  # type: ignore[arg-type]


def test_transcripts_round_trip_replace_isolate_delete(store_url: str) -> None:
    async def scenario(store: Store) -> None:
        assert await store.load_transcript("owner", "s1") is None
        first = transcript()
        await store.save_transcript(first)
        assert await store.load_transcript("owner", "s1") == first
        newer = transcript(messages=[{"role": "user", "content": "x"}], token_ids=[5], turns=4)
        await store.save_transcript(newer)
        assert await store.load_transcript("owner", "s1") == newer
        assert await store.load_transcript("someone else", "s1") is None
        assert await store.delete_transcript("owner", "s1") is True
        assert await store.delete_transcript("owner", "s1") is False
        assert await store.load_transcript("owner", "s1") is None
    run(store_url, scenario)


def test_expiry_deletes_only_idle_transcripts(store_url: str) -> None:
    async def scenario(store: Store) -> None:
        now = time.time()
        await store.save_transcript(transcript(session_id="old", updated=now - 3600))
        await store.save_transcript(transcript(session_id="fresh", updated=now))
        assert await store.expire_transcripts(now - 60) == [("owner", "old")]
        assert await store.load_transcript("owner", "old") is None
        assert await store.load_transcript("owner", "fresh") is not None
    run(store_url, scenario)


def test_holds_are_exclusive_and_given_back(store_url: str) -> None:
    async def scenario(store: Store) -> None:
        assert await store.hold("session a")
        assert not await store.hold("session a")  # the process itself does not take a name twice
        assert await store.hold("session b")
        store.give_back("session a")
        assert await store.hold("session a")  # waits for the give-back in flight
        assert [await store.take_slot("key k", 2) for _ in range(3)] == [0, 1, None]
        store.give_back("key k", 1)
        assert await store.take_slot("key k", 2) == 1
    run(store_url, scenario)


_HOLDER = """
import asyncio, sys
from pathlib import Path
from store.base import open_store

async def main():
    store = await open_store(sys.argv[1], Path("/nonexistent"), timeout_s=10, pool_size=1)
    assert await store.hold("session x") and await store.take_slot("key k", 2) == 0
    print("held", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_another_process_s_holds_are_respected_until_it_dies(store_url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, store_url], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        async def while_held(store: Store) -> None:
            assert not await store.hold("session x")
            assert await store.take_slot("key k", 2) == 1  # slot 0 is the other process's
            assert await store.take_slot("key k", 2) is None
        run(store_url, while_held)
    finally:
        holder.kill()  # no clean-up runs: the backend must let go by itself
        holder.wait(10)

    async def after(store: Store) -> None:
        deadline = time.monotonic() + 10
        while not await store.hold("session x"):  # PostgreSQL notices the closed connection at once
            assert time.monotonic() < deadline, "a dead process still holds its session"
            await asyncio.sleep(0.05)
        assert await store.take_slot("key k", 2) == 0
    run(store_url, after)


def test_requests_per_minute_window_with_retry_after(store_url: str) -> None:
    async def scenario(store: Store) -> None:
        assert await store.count_request("k", 1000.2, 2, 0, []) is None
        assert await store.count_request("k", 1020.5, 2, 0, []) is None
        assert await store.count_request("other", 1020.5, 2, 0, []) is None  # keys have their own windows
        refusal = await store.count_request("k", 1020.7, 2, 0, [])
        assert refusal is not None and (refusal.limit, refusal.allowed, refusal.used) == ("RPM", 2, 2)
        assert refusal.retry_after_s == pytest.approx(39.3)  # the bucket of second 1000 leaves at 1060
        assert await store.count_request("k", 1060.0, 2, 0, []) is None
    run(store_url, scenario)


def test_tokens_per_minute_counts_written_and_unsent_tokens(store_url: str) -> None:
    async def scenario(store: Store) -> None:
        assert await store.count_request("k", 1000.0, 0, 100, []) is None
        await store.add_usage({}, {("k", 1000): 60})
        assert await store.count_request("k", 1001.0, 0, 100, [(1001, 30)]) is None  # 90
        refusal = await store.count_request("k", 1001.5, 0, 100, [(1001, 45)])  # 105
        assert refusal == RateRefusal("TPM", 100, 105, 1060 - 1001.5)
        assert await store.count_request("k", 1060.0, 0, 100, [(1001, 45)]) is None  # 60 aged out
    run(store_url, scenario)


def test_usage_increments_from_concurrent_writers_all_land(store_url: str) -> None:
    async def writer(store: Store) -> None:
        for _ in range(25):
            await store.add_usage({"a": UsageTotals(1, 10, 5, 2, 1), "b": UsageTotals(requests=1)}, {})

    async def scenario(store: Store) -> dict[str, UsageTotals]:
        others = [await opened(store_url) for _ in range(3)]
        try:
            await asyncio.gather(writer(store), *(writer(o) for o in others))
        finally:
            for other in others:
                await other.close()
        return await store.usage()
    totals = run(store_url, scenario)
    assert totals == {"a": UsageTotals(100, 1000, 500, 200, 100), "b": UsageTotals(requests=100)}


def test_opening_again_finds_the_schema_current(store_url: str) -> None:
    run(store_url, lambda store: store.save_transcript(transcript()))
    assert run(store_url, lambda store: store.load_transcript("owner", "s1")) is not None
