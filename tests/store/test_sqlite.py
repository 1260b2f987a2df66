"""What only the SQLite backend has: the WAL file mode, processes opening a new file at once, and files written
before the schema was versioned."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

from store.base import open_store
from store.migrations import SQLITE
from store.records import UsageTotals


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"

    async def main() -> None:
        await (await open_store(None, path, timeout_s=5, pool_size=1)).close()
    asyncio.run(main())
    with sqlite3.connect(path) as db:  # both persist in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE)


def _open_and_close(path: Path, start: multiprocessing.synchronize.Barrier) -> None:
    async def main() -> None:
        await asyncio.to_thread(start.wait)  # the thread the store opens in is running: all go at once
        await (await open_store(None, path, timeout_s=5, pool_size=1)).close()
    asyncio.run(main())  # a StoreUnavailable ends the process with exit code 1


def test_processes_that_open_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """`--workers N` starts N processes on a fresh file together: switching it to WAL failed in some at once
    ("database is locked", about 1 open in 7 with three processes) until they opened it one at a time."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(12):
        path, start = tmp_path / f"state-{round_}.sqlite3", fork.Barrier(3)
        processes = [fork.Process(target=_open_and_close, args=(path, start)) for _ in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)
        assert [process.exitcode for process in processes] == [0, 0, 0]


def test_a_file_from_before_versioning_is_adopted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    with sqlite3.connect(path) as db:  # the two tables as the unversioned code created them
        db.execute("CREATE TABLE sessions (owner TEXT NOT NULL, id TEXT NOT NULL, messages BLOB NOT NULL, "
                   "token_ids BLOB NOT NULL, turns INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, "
                   "completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, created REAL NOT NULL, "
                   "updated REAL NOT NULL, PRIMARY KEY (owner, id))")
        db.execute("INSERT INTO sessions VALUES ('o', 's', x'5b5d', x'01000000', 1, 2, 3, 0, 1.0, 9e9)")
        db.execute("CREATE TABLE key_usage (owner TEXT PRIMARY KEY, requests INTEGER NOT NULL, prompt_tokens "
                   "INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, "
                   "reasoning_tokens INTEGER NOT NULL, updated REAL NOT NULL)")
        db.execute("INSERT INTO key_usage VALUES ('k', 5, 50, 10, 0, 0, 1.0)")

    async def main() -> None:
        store = await open_store(None, path, timeout_s=5, pool_size=1)
        try:
            found = await store.load_transcript("o", "s")
            assert found is not None and found.token_ids == [1] and found.turns == 1
            await store.add_usage({"k": UsageTotals(requests=1, prompt_tokens=5)}, {})
            assert (await store.usage())["k"] == UsageTotals(6, 55, 10, 0, 0)
        finally:
            await store.close()
    asyncio.run(main())
