"""Per-key usage totals in SQLite, in the sessions' database file, so what keys consumed survives restarts.

The limiter meters in memory; the app writes the totals that changed about once a second and at shutdown
(a kill -9 loses at most that last second)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from app.limits import UsageTotals

_SCHEMA = """CREATE TABLE IF NOT EXISTS key_usage (
    owner TEXT PRIMARY KEY, requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
    updated REAL NOT NULL)"""
_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")
FLUSH_INTERVAL_S = 1.0


class UsageStore:
    """Blocking calls (run them off the event loop); safe from any thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def load(self) -> dict[str, UsageTotals]:
        with self._lock:
            rows = self._db.execute(f"SELECT owner, {', '.join(_FIELDS)} FROM key_usage").fetchall()
        return {row[0]: UsageTotals(*row[1:]) for row in rows}

    def save(self, totals: dict[str, UsageTotals]) -> None:
        if not totals:
            return
        now = time.time()
        rows = [(owner, *(getattr(usage, f) for f in _FIELDS), now) for owner, usage in totals.items()]
        with self._lock:
            self._db.executemany(f"INSERT OR REPLACE INTO key_usage (owner, {', '.join(_FIELDS)}, updated) "
                                 "VALUES (?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
