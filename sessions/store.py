"""Session transcripts in SQLite (WAL) under the data dir, so a restarted server continues a session.

One row per (owner, session id): the conversation's messages as JSON, the exact token ids of the
conversation so far, and running totals. Writes are committed before the response that produced them
is finished, and WAL with synchronous=NORMAL survives the process being killed.
"""

from __future__ import annotations

import array
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec


@dataclass(slots=True)
class Transcript:
    owner: str  # digest of the API key that made the session
    session_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # the conversation, replies included
    token_ids: list[int] = field(default_factory=list)  # prompt + reply of the last turn, exactly
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    owner TEXT NOT NULL, id TEXT NOT NULL, messages BLOB NOT NULL, token_ids BLOB NOT NULL,
    turns INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (owner, id))
"""
_COLUMNS = "owner, id, messages, token_ids, turns, prompt_tokens, completion_tokens, cached_tokens, created, updated"


class SessionStore:
    """Blocking calls (run them off the event loop); safe from any thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        self._connection = db
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection (call with the lock held); reopened after close(), so an app can start again."""
        return self._connection or self._open()

    def load(self, owner: str, session_id: str) -> Transcript | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM sessions WHERE owner = ? AND id = ?",
                                   (owner, session_id)).fetchone()
        if row is None:
            return None
        ids = array.array("i")
        ids.frombytes(row[3])
        return Transcript(owner=row[0], session_id=row[1], messages=msgspec.json.decode(row[2]),
                          token_ids=ids.tolist(), turns=row[4], prompt_tokens=row[5], completion_tokens=row[6],
                          cached_tokens=row[7], created=row[8], updated=row[9])

    def save(self, t: Transcript) -> None:
        values = (t.owner, t.session_id, msgspec.json.encode(t.messages), array.array("i", t.token_ids).tobytes(),
                  t.turns, t.prompt_tokens, t.completion_tokens, t.cached_tokens, t.created, t.updated)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO sessions ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", values)

    def delete(self, owner: str, session_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM sessions WHERE owner = ? AND id = ?", (owner, session_id))
        return cursor.rowcount > 0

    def expire(self, idle_s: float) -> list[tuple[str, str]]:
        """Forget sessions idle for longer than `idle_s`; return their (owner, id)."""
        cutoff = time.time() - idle_s
        with self._lock:
            gone = self._db.execute("SELECT owner, id FROM sessions WHERE updated < ?", (cutoff,)).fetchall()
            self._db.execute("DELETE FROM sessions WHERE updated < ?", (cutoff,))
        return [(owner, session_id) for owner, session_id in gone]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
