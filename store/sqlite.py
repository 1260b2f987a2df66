"""The SQLite store: one file (WAL) that every process on the host opens; holds are fcntl record locks on a
file beside it, which the kernel drops when their process ends. Calls run in a thread, off the event loop."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from store.base import StoreUnavailable
from store.holds import Holds
from store.migrations import SQLITE
from store.rates import judge, window_start
from store.records import (
    TRANSCRIPT_COLUMNS,
    USAGE_FIELDS,
    RateRefusal,
    Transcript,
    UsageTotals,
    transcript_of,
    transcript_row,
)

T = TypeVar("T")
_ADD_USAGE = (f"INSERT INTO key_usage (owner, {', '.join(USAGE_FIELDS)}, updated) VALUES (?,?,?,?,?,?,?) "
              "ON CONFLICT (owner) DO UPDATE SET "
              + ", ".join(f"{f} = {f} + excluded.{f}" for f in USAGE_FIELDS) + ", updated = excluded.updated")
_ADD_SPENT = ("INSERT INTO key_rate (key, second, requests, tokens) VALUES (?, ?, 0, ?) "
              "ON CONFLICT (key, second) DO UPDATE SET tokens = tokens + excluded.tokens")
# A byte of the holds file past every hold id (store/holds.py: ids < 2**62): processes open the database one
# at a time, because SQLite's switch of a new file to WAL does not wait out a busy peer, it fails at once.
_OPENING = 1 << 62


class SQLiteStore(Holds):
    kind = "sqlite"

    def __init__(self, path: Path, db: sqlite3.Connection, holds_fd: int) -> None:
        super().__init__()
        self.path = path
        self._db = db
        self._db_lock = threading.Lock()
        self._holds_fd = holds_fd

    @classmethod
    async def open(cls, path: Path, *, timeout_s: float) -> SQLiteStore:
        return await asyncio.to_thread(cls._open, path, timeout_s)

    @classmethod
    def _open(cls, path: Path, timeout_s: float) -> SQLiteStore:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{path}.holds", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _lock_within(fd, _OPENING, timeout_s)
                try:
                    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=timeout_s)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    _migrate(db)
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, _OPENING, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"SQLite store {path}: {exc}") from exc
        return cls(path, db, fd)

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._db_lock:
                return call(self._db)
        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as exc:  # locked past the timeout, disk full, ...
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    # --- transcripts ---
    async def load_transcript(self, owner: str, session_id: str) -> Transcript | None:
        row = await self._run(lambda db: db.execute(
            f"SELECT {TRANSCRIPT_COLUMNS} FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)).fetchone())
        return None if row is None else transcript_of(row)

    async def save_transcript(self, transcript: Transcript) -> None:
        row = transcript_row(transcript)
        await self._run(lambda db: db.execute(
            f"INSERT OR REPLACE INTO sessions ({TRANSCRIPT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row))

    async def delete_transcript(self, owner: str, session_id: str) -> bool:
        cursor = await self._run(lambda db: db.execute(
            "DELETE FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)))
        return cursor.rowcount > 0

    async def expire_transcripts(self, before: float) -> list[tuple[str, str]]:
        rows = await self._run(lambda db: db.execute(
            "DELETE FROM sessions WHERE updated < ? RETURNING owner, id", (before,)).fetchall())
        return [(owner, session_id) for owner, session_id in rows]

    # --- holds: byte `id` of the holds file, locked by this process ---
    async def _take_first(self, ids: Sequence[int]) -> int:
        for index, hold in enumerate(ids):
            try:
                fcntl.lockf(self._holds_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, hold, os.SEEK_SET)
            except OSError:  # held by another process
                continue
            return index
        return -1

    async def _let_go(self, hold: int) -> None:
        fcntl.lockf(self._holds_fd, fcntl.LOCK_UN, 1, hold, os.SEEK_SET)

    # --- rate windows and usage ---
    async def count_request(self, key: str, now: float, rpm: int, tpm: int,
                            unsent: Sequence[tuple[int, int]]) -> RateRefusal | None:
        def count(db: sqlite3.Connection) -> RateRefusal | None:
            second = int(now)
            db.execute("BEGIN IMMEDIATE")  # one counting writer at a time across processes
            try:
                stored = db.execute("SELECT second, requests, tokens FROM key_rate WHERE key = ? AND second >= ?",
                                    (key, window_start(second))).fetchall()
                refusal = judge(stored, unsent, now, rpm, tpm)
                db.execute("DELETE FROM key_rate WHERE key = ? AND second < ?", (key, window_start(second)))
                if refusal is None:
                    db.execute("INSERT INTO key_rate (key, second, requests, tokens) VALUES (?, ?, 1, 0) "
                               "ON CONFLICT (key, second) DO UPDATE SET requests = requests + 1", (key, second))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return refusal
        return await self._run(count)

    async def add_usage(self, usage: Mapping[str, UsageTotals], spent: Mapping[tuple[str, int], int]) -> None:
        now = time.time()
        usage_rows = [(owner, *totals.values(), now) for owner, totals in usage.items()]
        spent_rows = [(key, second, tokens) for (key, second), tokens in spent.items()]

        def add(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_ADD_USAGE, usage_rows)
                db.executemany(_ADD_SPENT, spent_rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if usage_rows or spent_rows:
            await self._run(add)

    async def usage(self) -> dict[str, UsageTotals]:
        rows = await self._run(lambda db: db.execute(
            f"SELECT owner, {', '.join(USAGE_FIELDS)} FROM key_usage").fetchall())
        return {row[0]: UsageTotals(*row[1:]) for row in rows}

    async def close(self) -> None:
        await self._settle()
        with self._db_lock:
            self._db.close()
        os.close(self._holds_fd)  # the kernel lets go of every hold left


def _lock_within(fd: int, offset: int, timeout_s: float) -> None:
    """Lock one byte of `fd` for this process, waiting up to `timeout_s` for another process to let go."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise OSError(f"another process kept the store busy opening it for over {timeout_s:g} s") from None
            time.sleep(0.01)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")  # a second process starting now waits here, then finds nothing to do
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, statements in enumerate(SQLITE[version:], start=version + 1):
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
