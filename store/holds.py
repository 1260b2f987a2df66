"""Holds: exclusive claims on names (a session; slot i of a key's concurrency limit) that every process of a
deployment respects, and that a process which dies lets go of at once.

Backends give per-process locks that die with their holder (PostgreSQL advisory locks on one connection,
fcntl record locks on one open file). Those are re-entrant within the process, so this class keeps which
names the process holds and never takes one twice. A hold is given back in the background (`give_back` is
called from synchronous clean-up code); taking the same name again first waits for that to finish, so a
session's next turn does not find its own previous turn still holding it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Sequence

_ID_MASK = (1 << 62) - 1  # ids fit PostgreSQL's bigint and a 64-bit file offset


def hold_id(name: str, slot: int = 0) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}\0{slot}".encode(), digest_size=8).digest(), "big") & _ID_MASK


@functools.lru_cache(maxsize=4096)
def _slot_ids(name: str, slots: int) -> tuple[int, ...]:
    """The ids of a name's slots (a key's are needed for every request it makes)."""
    return tuple(hold_id(name, slot) for slot in range(slots))


class Holds:
    """The process's side of holds; a backend implements `_take_first` and `_let_go`."""

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._giving_back: dict[int, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()  # one take at a time: candidates are chosen from `_held`

    async def _take_first(self, ids: Sequence[int]) -> int:
        """Take the first free id of `ids` for this process; its index, or -1 when all are held elsewhere."""
        raise NotImplementedError

    async def _let_go(self, hold: int) -> None:
        raise NotImplementedError

    async def hold(self, name: str) -> bool:
        """Take `name` if no request anywhere holds it."""
        return await self.take_slot(name, 1) is not None

    async def take_slot(self, name: str, slots: int) -> int | None:
        """Take one of `name`'s `slots` slots; its number, or None when all are held."""
        ids = _slot_ids(name, slots)
        for pending in [self._giving_back[i] for i in ids if i in self._giving_back]:
            await asyncio.shield(pending)
        async with self._lock:
            free = [(slot, i) for slot, i in enumerate(ids) if i not in self._held]
            if not free:
                return None
            index = await self._take_first([i for _, i in free])
            if index < 0:
                return None
            slot, taken = free[index]
            self._held.add(taken)
            return slot

    def give_back(self, name: str, slot: int = 0) -> None:
        """Let go of a hold taken by `hold` or `take_slot` (in the background, at once)."""
        taken = hold_id(name, slot)
        if taken not in self._held or taken in self._giving_back:
            return
        task = asyncio.get_running_loop().create_task(self._give_back(taken))
        self._giving_back[taken] = task

    async def _give_back(self, taken: int) -> None:
        try:
            await self._let_go(taken)
        except Exception:  # noqa: BLE001 - the backend lost its connection: its locks went with it
            pass
        finally:
            self._held.discard(taken)
            del self._giving_back[taken]

    async def _settle(self) -> None:
        """Wait for every hold being given back (before closing)."""
        if self._giving_back:
            await asyncio.gather(*self._giving_back.values(), return_exceptions=True)

    def holding(self) -> int:
        return len(self._held)
