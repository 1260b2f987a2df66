"""Which worker serves a request: session affinity by rendezvous hashing, otherwise the least loaded.

Rendezvous (highest-random-weight) hashing sends a session to the same worker for as long as that worker
is up, so its RadixAttention cache keeps the conversation's prefix; when a worker leaves or joins, only the
sessions it owned move. A request without a session goes to the up worker with the fewest requests in
flight.
"""

from __future__ import annotations

import hashlib

from engines.sglang.worker import Worker


def _weight(session_key: str, url: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{session_key}\x00{url}".encode()).digest()[:8], "big")


class Router:
    def __init__(self, workers: list[Worker]) -> None:
        if not workers:
            raise ValueError("at least one SGLang worker URL is needed")
        self.workers = workers

    def candidates(self, session_key: str | None) -> list[Worker]:
        """Workers in the order to try them: up ones first, each group in preference order."""
        if session_key is not None:
            ranked = sorted(self.workers, key=lambda w: _weight(session_key, w.url), reverse=True)
        else:
            ranked = sorted(self.workers, key=lambda w: w.in_flight)
        return [w for w in ranked if w.up] + [w for w in ranked if not w.up]

    def any_up(self) -> bool:
        return any(w.up for w in self.workers)
