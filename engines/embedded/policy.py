"""The embedded scheduler's policy: which groups join the batch, which prefill how much, which decode.

It owns the four queues and decides; it runs nothing (the scheduler in scheduler.py runs the model) and
needs no model to be tested. Each iteration: `expired()` (requests that waited too long), `admit()` (groups
that take free batch slots: the tenant with the fewest choices in the batch first, and when the batch is
full a tenant holding at least two slots more than a waiting one has its newest choice paused, its KV cache
kept), then `schedule()` -> a Step: at most one prefill chunk (so that a long prompt does not stall
everyone's decode for long) and one decode step over every running choice. The runner reports back with
`prefilled()` and `decoded()`; a request that failed or was cancelled is marked `aborted` and leaves at the
next `drop_aborted()`.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from engines.embedded.sequence import Group, Sequence


@dataclass(frozen=True, slots=True)
class Prefill:
    group: Group
    start: int  # prompt positions [start, end) run in this step
    end: int

    @property
    def last(self) -> bool:
        return self.end == len(self.group.req.prompt_ids)


@dataclass(frozen=True, slots=True)
class Step:
    prefill: Prefill | None
    # one token each (and any drafted ones), batched; a prefill that ends starts choices that join them
    decode: list[Sequence]


def _tenant(item: Sequence | Group) -> str | None:
    return (item.group if isinstance(item, Sequence) else item).req.tenant


def _enqueued_at(item: Sequence | Group) -> float:
    return (item.group if isinstance(item, Sequence) else item).enqueued_at


class BatchPolicy:
    def __init__(self, max_batch_size: int, prefill_chunk: int, queue_timeout_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.queue_timeout_s = queue_timeout_s
        self.waiting: deque[Group] = deque()
        self.prefilling: deque[Group] = deque()
        self.running: list[Sequence] = []
        self.paused: deque[Sequence] = deque()  # taken out of the batch for another tenant; resumed first

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.running or self.paused)

    def add(self, group: Group) -> None:
        self.waiting.append(group)

    def drop_aborted(self) -> list[Group]:
        """Forget aborted requests; return the prefilling ones (the runner releases their prefix match)."""
        dropped = [g for g in self.prefilling if g.aborted]
        if any(g.aborted for g in self.waiting):
            self.waiting = deque(g for g in self.waiting if not g.aborted)
        if dropped:
            self.prefilling = deque(g for g in self.prefilling if not g.aborted)
        if any(c.group.aborted for c in self.running):
            self.running = [c for c in self.running if not c.group.aborted]
        if any(c.group.aborted for c in self.paused):
            self.paused = deque(c for c in self.paused if not c.group.aborted)
        return dropped

    def expired(self, now: float) -> list[Group]:
        """The waiting groups past the queue timeout, taken out of the queue (oldest first)."""
        out = []
        deadline = now - self.queue_timeout_s
        while self.waiting and self.waiting[0].enqueued_at < deadline:
            out.append(self.waiting.popleft())
        return out

    def admit(self, now: float) -> list[Group]:
        """Fill the batch: the tenant with the fewest choices in it first, oldest first within a tenant.
        Paused choices resume here; the groups returned start prefilling (the runner gives them a cache)."""
        active: Counter[str | None] = Counter(c.group.req.tenant for c in self.running)
        for group in self.prefilling:
            active[group.req.tenant] += group.req.n
        admitted = []
        while self.paused or self.waiting:
            candidates: list[Sequence | Group] = [*self.paused, *self.waiting]
            item = min(candidates, key=lambda i: (active[_tenant(i)], _enqueued_at(i)))
            tenant, need = _tenant(item), 1 if isinstance(item, Sequence) else item.req.n
            if sum(active.values()) + need > self.max_batch_size and not self._make_room(active, tenant, need):
                break
            active[tenant] += need
            if isinstance(item, Sequence):
                self.paused.remove(item)
                self.running.append(item)
                continue
            self.waiting.remove(item)
            item.admitted_at = now
            self.prefilling.append(item)
            admitted.append(item)
        return admitted

    def _make_room(self, active: Counter[str | None], tenant: str | None, need: int) -> bool:
        """Pause the newest choices of tenants holding at least two slots more than `tenant` until `need`
        slots are free (all or nothing); at most max_batch_size choices stay paused (their KV caches are kept)."""
        counts, running, paused = Counter(active), list(self.running), list[Sequence]()
        while sum(counts.values()) + need > self.max_batch_size:
            victims = [c for c in running if counts[c.group.req.tenant] >= counts[tenant] + 2]
            if not victims or len(self.paused) + len(paused) >= self.max_batch_size:
                return False
            victim = max(victims, key=lambda c: (counts[c.group.req.tenant], c.group.admitted_at))
            running.remove(victim)
            paused.append(victim)
            counts[victim.group.req.tenant] -= 1
        self.running = running
        self.paused.extend(paused)
        active.clear()
        active.update(counts)
        return True

    def schedule(self) -> Step:
        """This step's work: the oldest prefilling group's next chunk, and every running choice."""
        prefill = None
        if self.prefilling:
            group = self.prefilling[0]
            end = min(len(group.req.prompt_ids), group.prefilled + self.prefill_chunk)
            prefill = Prefill(group, group.prefilled, end)
        return Step(prefill, list(self.running))

    def prefilled(self, group: Group, end: int, started: list[Sequence] | None = None) -> None:
        """The runner ran a chunk up to `end`; with the last one, the group's choices start decoding."""
        group.prefilled = end
        if started is None:
            return
        if self.prefilling and self.prefilling[0] is group:
            self.prefilling.popleft()
        self.running.extend(started)

    def decoded(self, still_running: list[Sequence]) -> None:
        """After a decode step: the choices that go on (the others finished or failed)."""
        self.running = [c for c in still_running if not c.group.aborted]

    def failed(self, group: Group) -> None:
        """A group's own failure: it leaves the batch now (prefilling) or at the next drop_aborted()."""
        group.aborted = True
        if self.prefilling and self.prefilling[0] is group:
            self.prefilling.popleft()
