"""The PostgreSQL store, for many hosts: tables shared by every process, and holds as session-level
advisory locks on one connection per process (PostgreSQL drops them the moment that connection ends, so a
process that dies lets go of its sessions and slots at once). psycopg 3, asynchronous, with a pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from store.base import StoreUnavailable
from store.holds import Holds, hold_id
from store.migrations import POSTGRES, POSTGRES_VERSION_TABLE
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

log = logging.getLogger("lodestar.store")
T = TypeVar("T")
_ADD_USAGE = (f"INSERT INTO key_usage (owner, {', '.join(USAGE_FIELDS)}, updated) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (owner) DO UPDATE SET "
              + ", ".join(f"{f} = key_usage.{f} + excluded.{f}" for f in USAGE_FIELDS)
              + ", updated = excluded.updated")
_ADD_SPENT = ("INSERT INTO key_rate (key, second, requests, tokens) VALUES (%s, %s, 0, %s) "
              "ON CONFLICT (key, second) DO UPDATE SET tokens = key_rate.tokens + excluded.tokens")
_MIGRATION_LOCK = hold_id("lodestar schema migration")
# Dead peers are noticed by TCP keepalive, on both ends: so a host that vanishes without closing its
# connections has its holds let go by the server in about 25 s (the server's default follows the OS: hours).
_KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"}


def _options(timeout_s: float) -> dict[str, Any]:
    return {"autocommit": True, "connect_timeout": max(2, round(timeout_s)), **_KEEPALIVE}


async def _connect(url: str, timeout_s: float) -> psycopg.AsyncConnection:
    options = _options(timeout_s)
    return await psycopg.AsyncConnection.connect(url, **options)


class PostgresStore(Holds):
    kind = "postgresql"

    def __init__(self, url: str, pool: AsyncConnectionPool, holds: psycopg.AsyncConnection,
                 timeout_s: float) -> None:
        super().__init__()
        self.url = url
        self._pool = pool
        self._holds = holds
        self._timeout_s = timeout_s

    @classmethod
    async def open(cls, url: str, *, timeout_s: float, pool_size: int) -> PostgresStore:
        # check: a connection is tried before it is handed out, so one that died with a restart of the
        # server is replaced instead of failing a request.
        pool = AsyncConnectionPool(url, min_size=1, max_size=pool_size, kwargs=_options(timeout_s), timeout=timeout_s,
                                   open=False, name="lodestar-store", check=AsyncConnectionPool.check_connection)
        try:
            await pool.open(wait=True, timeout=timeout_s)
            async with pool.connection() as conn:
                await _migrate(conn)
            holds = await _connect(url, timeout_s)
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            await pool.close()
            raise StoreUnavailable(f"PostgreSQL store {_safe(url)}: {exc}") from exc
        return cls(url, pool, holds, timeout_s)

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"PostgreSQL store {_safe(self.url)}: {exc or 'no answer in time'}") from exc

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self._pool.connection() as conn:
            yield conn

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def fetch() -> list[tuple[Any, ...]]:
            async with self._conn() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall() if cursor.description else []
        return await self._guarded(fetch())

    async def _transaction(self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self._conn() as conn, conn.transaction():
                return await work(conn)
        return await self._guarded(run())

    # --- transcripts ---
    async def load_transcript(self, owner: str, session_id: str) -> Transcript | None:
        rows = await self._fetch(f"SELECT {TRANSCRIPT_COLUMNS} FROM sessions WHERE owner = %s AND id = %s",
                                 (owner, session_id))
        return transcript_of(rows[0]) if rows else None

    async def save_transcript(self, transcript: Transcript) -> None:
        columns = TRANSCRIPT_COLUMNS.split(", ")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
        await self._fetch(f"INSERT INTO sessions ({TRANSCRIPT_COLUMNS}) VALUES ({', '.join(['%s'] * len(columns))}) "
                          f"ON CONFLICT (owner, id) DO UPDATE SET {updates}", transcript_row(transcript))

    async def delete_transcript(self, owner: str, session_id: str) -> bool:
        rows = await self._fetch("DELETE FROM sessions WHERE owner = %s AND id = %s RETURNING id", (owner, session_id))
        return bool(rows)

    async def expire_transcripts(self, before: float) -> list[tuple[str, str]]:
        rows = await self._fetch("DELETE FROM sessions WHERE updated < %s RETURNING owner, id", (before,))
        return [(owner, session_id) for owner, session_id in rows]

    # --- holds: advisory locks on this process's holds connection ---
    async def _take_first(self, ids: Sequence[int]) -> int:
        async def take() -> int:
            cursor = await self._holds.execute("SELECT lodestar_take_first(%s::bigint[])", (list(ids),))
            row = await cursor.fetchone()
            return int(row[0]) if row else -1
        return await self._on_holds(take)

    async def _let_go(self, hold: int) -> None:
        async def let_go() -> None:
            await self._holds.execute("SELECT pg_advisory_unlock(%s)", (hold,))
        await self._on_holds(let_go)

    async def _on_holds(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run on the holds connection; once it is found broken, reconnect, take back what this process
        held (PostgreSQL let go of it with the old connection) and try once more."""
        if self._holds.closed or self._holds.broken:
            await self._guarded(self._reconnect_holds())
        try:
            return await self._guarded(call())
        except StoreUnavailable:
            if not self._holds.broken:
                raise
        await self._guarded(self._reconnect_holds())
        return await self._guarded(call())

    async def _reconnect_holds(self) -> None:
        self._holds = await _connect(self.url, self._timeout_s)
        lost = 0
        for hold in list(self._held):
            cursor = await self._holds.execute("SELECT pg_try_advisory_lock(%s)", (hold,))
            row = await cursor.fetchone()
            lost += not (row and row[0])
        log.warning("reconnected the store's holds connection; %d of %d holds were taken by others meanwhile",
                    lost, len(self._held))

    # --- rate windows and usage ---
    async def count_request(self, key: str, now: float, rpm: int, tpm: int,
                            unsent: Sequence[tuple[int, int]]) -> RateRefusal | None:
        second = int(now)

        async def count(conn: psycopg.AsyncConnection) -> RateRefusal | None:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (hold_id(f"rate\0{key}"),))
            cursor = await conn.execute("SELECT second, requests, tokens FROM key_rate WHERE key = %s "
                                        "AND second >= %s", (key, window_start(second)))
            refusal = judge(await cursor.fetchall(), unsent, now, rpm, tpm)
            await conn.execute("DELETE FROM key_rate WHERE key = %s AND second < %s", (key, window_start(second)))
            if refusal is None:
                await conn.execute("INSERT INTO key_rate (key, second, requests, tokens) VALUES (%s, %s, 1, 0) "
                                   "ON CONFLICT (key, second) DO UPDATE SET requests = key_rate.requests + 1",
                                   (key, second))
            return refusal
        return await self._transaction(count)

    async def add_usage(self, usage: Mapping[str, UsageTotals], spent: Mapping[tuple[str, int], int]) -> None:
        now = time.time()
        usage_rows = [(owner, *totals.values(), now) for owner, totals in sorted(usage.items())]
        spent_rows = [(key, second, tokens) for (key, second), tokens in sorted(spent.items())]

        async def add(conn: psycopg.AsyncConnection) -> None:
            async with conn.cursor() as cursor:  # rows in key order: concurrent writers never deadlock
                if usage_rows:
                    await cursor.executemany(_ADD_USAGE, usage_rows)
                if spent_rows:
                    await cursor.executemany(_ADD_SPENT, spent_rows)
        if usage_rows or spent_rows:
            await self._transaction(add)

    async def usage(self) -> dict[str, UsageTotals]:
        rows = await self._fetch(f"SELECT owner, {', '.join(USAGE_FIELDS)} FROM key_usage")
        return {row[0]: UsageTotals(*row[1:]) for row in rows}

    async def close(self) -> None:
        await self._settle()
        await self._holds.close()  # PostgreSQL lets go of every hold left
        await self._pool.close()


async def _migrate(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))  # one process at a time
        await conn.execute(POSTGRES_VERSION_TABLE)
        cursor = await conn.execute("SELECT max(version) FROM lodestar_schema")
        row = await cursor.fetchone()
        version = (row[0] if row else None) or 0
        for number, statements in enumerate(POSTGRES[version:], start=version + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO lodestar_schema (version) VALUES (%s)", (number,))


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}@{host}" if at else url
