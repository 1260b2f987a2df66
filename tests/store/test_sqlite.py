"""What only the SQLite backend has: the WAL file mode, and files written before the schema was versioned."""

from __future__ import annotations

import asyncio
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
