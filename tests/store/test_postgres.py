"""The throwaway PostgreSQL the store's tests run against: it starts, takes connections on loopback, and
serialises concurrent increments of one row (what the usage totals will rely on)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests.postgres import Postgres


def test_a_throwaway_server_answers_on_loopback(postgres: Postgres) -> None:
    with psycopg.connect(postgres.dsn, connect_timeout=10) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 150000
        address = conn.execute("SELECT inet_server_addr()").fetchone()
        assert address is not None and str(address[0]) == "127.0.0.1"


def test_concurrent_upserts_lose_no_increment(postgres: Postgres) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE counters (key TEXT PRIMARY KEY, n BIGINT NOT NULL)")

    def add(times: int) -> None:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            for _ in range(times):
                conn.execute("INSERT INTO counters VALUES ('k', 1) "
                             "ON CONFLICT (key) DO UPDATE SET n = counters.n + EXCLUDED.n")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, [100] * 4))
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT n FROM counters WHERE key = 'k'").fetchone() == (400,)
