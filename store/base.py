"""The store's one interface, and how a deployment picks its backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from store.records import RateRefusal, Transcript, UsageTotals


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time (the message says which and why)."""


class Store(Protocol):
    """Every method may raise StoreUnavailable."""

    kind: str  # "sqlite" or "postgresql"

    # Session transcripts, by (owner, session id).
    async def load_transcript(self, owner: str, session_id: str) -> Transcript | None: ...
    async def save_transcript(self, transcript: Transcript) -> None: ...
    async def delete_transcript(self, owner: str, session_id: str) -> bool: ...
    async def expire_transcripts(self, before: float) -> list[tuple[str, str]]:
        """Delete the transcripts last updated before `before` (epoch seconds); their (owner, id)."""
        ...

    # Holds (store/holds.py): exclusive across every process and host, let go of when the holder dies.
    async def hold(self, name: str) -> bool: ...
    async def take_slot(self, name: str, slots: int) -> int | None: ...
    def give_back(self, name: str, slot: int = 0) -> None: ...

    # Per-key rate windows (store/rates.py) and usage totals.
    async def count_request(self, key: str, now: float, rpm: int, tpm: int,
                            unsent: Sequence[tuple[int, int]]) -> RateRefusal | None:
        """Count one request in `key`'s window at `now`, unless the window is full: then its refusal.
        `unsent`: (second, tokens) this process spent and has not yet written with add_usage."""
        ...

    async def add_usage(self, usage: Mapping[str, UsageTotals], spent: Mapping[tuple[str, int], int]) -> None:
        """Add increments to keys' totals, and tokens spent to their (key, second) window buckets."""
        ...

    async def usage(self) -> dict[str, UsageTotals]: ...
    async def close(self) -> None: ...


async def open_store(url: str | None, sqlite_path: Path, *, timeout_s: float, pool_size: int) -> Store:
    """The store a deployment names: a postgresql:// URL, or the SQLite file (the default). Applies the
    schema's pending migrations."""
    if url is None or url.startswith("sqlite:"):
        from store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:").removeprefix("//")).expanduser() if url else sqlite_path
        return await SQLiteStore.open(path, timeout_s=timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        from store.postgres import PostgresStore

        return await PostgresStore.open(url, timeout_s=timeout_s, pool_size=pool_size)
    raise ValueError(f"store {url!r}: expected postgresql://... or sqlite:PATH")
