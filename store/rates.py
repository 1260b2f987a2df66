"""Per-key request and token windows over the last minute, kept in one-second buckets by the store: a
bucket ages out whole, so a window may hold up to one second more than a minute (the documented slack)."""

from __future__ import annotations

from collections.abc import Sequence

from store.records import RateRefusal

WINDOW_S = 60


def window_start(second: int) -> int:
    """The oldest bucket still inside the window that ends at `second`."""
    return second - WINDOW_S + 1


Bucket = tuple[int, int, int]  # (second, requests, tokens)


def judge(stored: Sequence[Bucket], unsent: Sequence[tuple[int, int]], now: float, rpm: int,
          tpm: int) -> RateRefusal | None:
    """Whether one more request fits. `stored`: the buckets inside the window; `unsent`: (second, tokens)
    this process has spent and not yet written to the store."""
    start = window_start(int(now))
    buckets = sorted([*stored, *((second, 0, n) for second, n in unsent if second >= start)])
    requests = sum(b[1] for b in buckets)
    tokens = sum(b[2] for b in buckets)
    if rpm and requests >= rpm:
        return RateRefusal("RPM", rpm, requests, _free_at(buckets, 1, requests, rpm) - now)
    if tpm and tokens >= tpm:
        return RateRefusal("TPM", tpm, tokens, _free_at(buckets, 2, tokens, tpm) - now)
    return None


def _free_at(buckets: Sequence[Bucket], column: int, used: int, limit: int) -> float:
    """When enough of the window will have aged out to be under the limit again."""
    for bucket in buckets:
        used -= bucket[column]
        if used < limit:
            return float(bucket[0] + WINDOW_S)
    return float(buckets[-1][0] + WINDOW_S) if buckets else 0.0
