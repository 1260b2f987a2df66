"""The store's schema, as numbered migrations per backend. A process applies the ones its database has not
seen at start-up, in one transaction, serialised against other processes starting at the same time. Add a
migration at the end; never edit one that has shipped."""

from __future__ import annotations

# SQLite keeps the version in PRAGMA user_version. Version 1 creates the tables with IF NOT EXISTS so that
# files written before versioning (sessions and key_usage only) are adopted as they are.
SQLITE: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS sessions (
            owner TEXT NOT NULL, id TEXT NOT NULL, messages BLOB NOT NULL, token_ids BLOB NOT NULL,
            turns INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
            PRIMARY KEY (owner, id))""",
        "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated)",
        """CREATE TABLE IF NOT EXISTS key_usage (
            owner TEXT PRIMARY KEY, requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL, updated REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS key_rate (
            key TEXT NOT NULL, second INTEGER NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL,
            PRIMARY KEY (key, second))""",
    ],
]

# PostgreSQL keeps the version in lodestar_schema.
POSTGRES_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS lodestar_schema (version INTEGER NOT NULL)"
POSTGRES: list[list[str]] = [
    [
        """CREATE TABLE sessions (
            owner TEXT NOT NULL, id TEXT NOT NULL, messages BYTEA NOT NULL, token_ids BYTEA NOT NULL,
            turns INTEGER NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
            cached_tokens BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (owner, id))""",
        "CREATE INDEX sessions_updated ON sessions (updated)",
        """CREATE TABLE key_usage (
            owner TEXT PRIMARY KEY, requests BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL, reasoning_tokens BIGINT NOT NULL,
            updated DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE key_rate (
            key TEXT NOT NULL, second BIGINT NOT NULL, requests BIGINT NOT NULL, tokens BIGINT NOT NULL,
            PRIMARY KEY (key, second))""",
        # Takes the first advisory lock of `ids` that is free, in one round trip: the index, or -1.
        """CREATE FUNCTION lodestar_take_first(ids BIGINT[]) RETURNS INTEGER LANGUAGE plpgsql AS $$
        BEGIN
            FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
                IF pg_try_advisory_lock(ids[i]) THEN
                    RETURN i - 1;
                END IF;
            END LOOP;
            RETURN -1;
        END $$""",
    ],
]
