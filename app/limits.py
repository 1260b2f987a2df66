"""Per-API-key limits (requests in flight, requests and tokens per minute) and usage metering.

Keys are known by a digest of the Bearer token (sessions.manager.owner_of). Without configured keys every
client is the one anonymous key, so a client cannot grow these tables by inventing tokens.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from core.errors import APIError
from core.replies import Usage

WINDOW_S = 60.0


@dataclass(slots=True)
class UsageTotals:
    """What one key consumed (what it is billed on); kept across restarts by app/usage_store.py."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class _KeyState:
    key: str
    in_flight: int = 0
    admitted: deque[float] = field(default_factory=deque)  # admission times within the window
    spent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, tokens) within the window
    spent_sum: int = 0
    usage: UsageTotals = field(default_factory=UsageTotals)

    def prune(self, now: float) -> None:
        while self.admitted and self.admitted[0] <= now - WINDOW_S:
            self.admitted.popleft()
        while self.spent and self.spent[0][0] <= now - WINDOW_S:
            self.spent_sum -= self.spent.popleft()[1]


class KeyLimiter:
    def __init__(self, *, max_concurrent: int, requests_per_minute: int, tokens_per_minute: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_concurrent = max_concurrent
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._changed: set[str] = set()  # keys whose usage changed since take_changed()

    def admit(self, key: str) -> Permit:
        """Count a new request against `key`, or refuse it with a 429 that says which limit and when to retry."""
        state = self._state(key)
        now = self.clock()
        state.prune(now)
        if self.max_concurrent and state.in_flight >= self.max_concurrent:
            raise _refused(f"Too many concurrent requests for this API key: limit {self.max_concurrent}, "
                           f"in flight {state.in_flight}. Retry when one has finished.",
                           "concurrency_limit_exceeded", 1.0)
        if self.rpm and len(state.admitted) >= self.rpm:
            wait = state.admitted[0] + WINDOW_S - now
            raise _refused(f"Rate limit reached for requests per minute (RPM): limit {self.rpm}, used "
                           f"{len(state.admitted)}. Please try again in {wait:.1f}s.", "rate_limit_exceeded", wait)
        if self.tpm and state.spent_sum >= self.tpm:
            wait = _tokens_free_at(state, self.tpm) - now
            raise _refused(f"Rate limit reached for tokens per minute (TPM): limit {self.tpm}, used "
                           f"{state.spent_sum}. Please try again in {wait:.1f}s.", "rate_limit_exceeded", wait)
        state.in_flight += 1
        state.admitted.append(now)
        state.usage.requests += 1
        self._changed.add(key)
        return Permit(self, state)

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState(key)
        return state

    def usage(self) -> dict[str, UsageTotals]:
        return {key: state.usage for key, state in self._keys.items()}

    def restore(self, totals: dict[str, UsageTotals]) -> None:
        """Start from stored totals (at start-up, before any request)."""
        for key, usage in totals.items():
            self._state(key).usage = replace(usage)

    def restore_changed(self, changed: dict[str, UsageTotals]) -> None:
        """Saving `changed` failed: keep those keys marked so the next flush writes them."""
        self._changed.update(changed)

    def take_changed(self) -> dict[str, UsageTotals]:
        """Copies of the totals that changed since the last call, for the store."""
        changed = {key: replace(self._keys[key].usage) for key in self._changed}
        self._changed.clear()
        return changed


class Permit:
    """One admitted request: it meters the request's usage once it has ended, and is released then."""

    __slots__ = ("limiter", "state", "released")

    def __init__(self, limiter: KeyLimiter, state: _KeyState) -> None:
        self.limiter = limiter
        self.state = state
        self.released = False

    def finished(self, usage: Usage) -> None:
        spent = usage.prompt_tokens + usage.completion_tokens
        state = self.state
        state.spent.append((self.limiter.clock(), spent))
        state.spent_sum += spent
        metered = state.usage
        metered.prompt_tokens += usage.prompt_tokens
        metered.completion_tokens += usage.completion_tokens
        metered.cached_tokens += usage.prompt_tokens_details.cached_tokens
        metered.reasoning_tokens += usage.completion_tokens_details.reasoning_tokens
        self.limiter._changed.add(state.key)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.state.in_flight -= 1


def _tokens_free_at(state: _KeyState, limit: int) -> float:
    """When enough of the window's tokens will have aged out to be under the limit again."""
    remaining = state.spent_sum
    for stamp, tokens in state.spent:
        remaining -= tokens
        if remaining < limit:
            return stamp + WINDOW_S
    return state.spent[-1][0] + WINDOW_S if state.spent else 0.0


def _refused(message: str, code: str, retry_after: float) -> APIError:
    return APIError(429, message, code=code, type="rate_limit_error",
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
