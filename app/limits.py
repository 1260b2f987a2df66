"""Per-API-key limits (requests in flight, requests and tokens per minute) and usage metering, across every
process and host that shares the store.

Keys are known by a digest of the Bearer token (sessions.manager.owner_of). Without configured keys every
client is the one anonymous key, so a client cannot grow these tables by inventing tokens.

- In flight: exact. A request holds one of the key's slots in the store (store/holds.py) until it ends.
- Per minute: one-second buckets in the store; tokens spent are written with the usage, about once a second,
  so another process sees them up to a second late (docs/deployment.md#limits).
- Usage: this process's increments, written about once a second and at shutdown (added, never overwritten).
If the store cannot be reached, this process decides alone: its own requests in flight count, the
per-minute limits are not applied, and usage waits in memory until the store answers again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable

from core.errors import APIError
from core.replies import Usage
from core.settings import LimitSettings
from store.base import Store, StoreUnavailable
from store.records import RateRefusal, UsageTotals

log = logging.getLogger("lodestar.limits")
FLUSH_INTERVAL_S = 1.0
_LOCAL = -1  # the slot of a request admitted while the store was unreachable


class KeyLimiter:
    def __init__(self, store: Store, limits: LimitSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.max_concurrent = limits.max_concurrent_per_key
        self.rpm = limits.requests_per_minute
        self.tpm = limits.tokens_per_minute
        self.clock = clock
        self._in_flight: defaultdict[str, int] = defaultdict(int)  # this process's requests, per key
        self._pending: defaultdict[str, UsageTotals] = defaultdict(UsageTotals)  # usage not yet written
        self._unsent: defaultdict[str, defaultdict[int, int]] = _buckets()  # key -> second -> tokens not written
        self._warned = 0.0

    async def admit(self, key: str) -> Permit:
        """Count a new request against `key`, or refuse it with a 429 that says which limit and when to retry."""
        slot = await self._take_slot(key) if self.max_concurrent else None
        try:
            if self.rpm or self.tpm:
                refusal = await self._count(key)
                if refusal is not None:
                    raise _refused(f"Rate limit reached for {_NAMES[refusal.limit]} ({refusal.limit}): limit "
                                   f"{refusal.allowed}, used {refusal.used}. Please try again in "
                                   f"{refusal.retry_after_s:.1f}s.", "rate_limit_exceeded", refusal.retry_after_s)
        except BaseException:
            if slot is not None and slot != _LOCAL:
                self.store.give_back(_slots_of(key), slot)
            raise
        self._in_flight[key] += 1
        self._pending[key].requests += 1
        return Permit(self, key, slot)

    async def _take_slot(self, key: str) -> int | None:
        if self._in_flight.get(key, 0) < self.max_concurrent:  # (get: a refused key leaves no entry)
            try:
                slot = await self.store.take_slot(_slots_of(key), self.max_concurrent)
            except StoreUnavailable as exc:
                self._warn(exc)
                slot = _LOCAL
            if slot is not None:
                return slot
        raise _refused(f"Too many concurrent requests for this API key: limit {self.max_concurrent}, in flight "
                       f"{self.max_concurrent}. Retry when one has finished.", "concurrency_limit_exceeded", 1.0)

    async def _count(self, key: str) -> RateRefusal | None:
        unsent = list(self._unsent[key].items()) if key in self._unsent else []
        try:
            return await self.store.count_request(key, self.clock(), self.rpm, self.tpm, unsent)
        except StoreUnavailable as exc:
            self._warn(exc)
            return None

    def _warn(self, exc: StoreUnavailable) -> None:
        if time.monotonic() - self._warned > 10:  # once per 10 s of outage, not per request
            self._warned = time.monotonic()
            log.warning("store unreachable: per-key limits are this process's own until it answers (%s)", exc)

    async def flush(self) -> None:
        """Write this process's usage increments and spent tokens (kept for the next flush if that fails)."""
        pending, unsent = self._pending, self._unsent
        if not pending and not unsent:
            return
        self._pending, self._unsent = defaultdict(UsageTotals), _buckets()
        try:
            await self.store.add_usage(pending, {(key, second): tokens for key, seconds in unsent.items()
                                                 for second, tokens in seconds.items()})
        except BaseException:
            for key, totals in pending.items():
                self._pending[key].add(totals)
            for key, seconds in unsent.items():
                for second, tokens in seconds.items():
                    self._unsent[key][second] += tokens
            raise

    async def usage(self) -> dict[str, UsageTotals]:
        """Every key's totals, this process's latest included."""
        await self.flush()
        return await self.store.usage()


class Permit:
    """One admitted request: it meters the request's usage once it has ended, and is released then."""

    __slots__ = ("limiter", "key", "slot", "released")

    def __init__(self, limiter: KeyLimiter, key: str, slot: int | None) -> None:
        self.limiter = limiter
        self.key = key
        self.slot = slot
        self.released = False

    def finished(self, usage: Usage) -> None:
        limiter = self.limiter
        metered = limiter._pending[self.key]
        metered.prompt_tokens += usage.prompt_tokens
        metered.completion_tokens += usage.completion_tokens
        metered.cached_tokens += usage.prompt_tokens_details.cached_tokens
        metered.reasoning_tokens += usage.completion_tokens_details.reasoning_tokens
        if limiter.tpm:
            limiter._unsent[self.key][int(limiter.clock())] += usage.prompt_tokens + usage.completion_tokens

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        limiter = self.limiter
        limiter._in_flight[self.key] -= 1
        if not limiter._in_flight[self.key]:
            del limiter._in_flight[self.key]
        if self.slot is not None and self.slot != _LOCAL:
            limiter.store.give_back(_slots_of(self.key), self.slot)


_NAMES = {"RPM": "requests per minute", "TPM": "tokens per minute"}


def _buckets() -> defaultdict[str, defaultdict[int, int]]:
    return defaultdict(lambda: defaultdict(int))


def _slots_of(key: str) -> str:
    return f"key\0{key}"


def _refused(message: str, code: str, retry_after: float) -> APIError:
    return APIError(429, message, code=code, type="rate_limit_error",
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
