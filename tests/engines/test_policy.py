"""BatchPolicy without a model: admission, fairness between tenants, pausing, prefill chunks, expiry.

The runner's side is played by hand: a Sequence here is a bare choice (no cache, sampler or detokenizer),
which is all the policy reads.
"""

from __future__ import annotations

from typing import Any

from engines.base import EngineRequest, SamplingParams
from engines.embedded.policy import BatchPolicy
from engines.embedded.sequence import Group, Sequence


def group(name: str, tenant: str | None = None, *, n: int = 1, prompt: int = 10, at: float = 0.0) -> Group:
    req = EngineRequest(request_id=name, prompt_ids=list(range(prompt)), sampling=SamplingParams(max_new_tokens=8),
                        n=n, tenant=tenant)
    return Group(req, emit=lambda event: None, enqueued_at=at)


def choices(g: Group) -> list[Sequence]:
    none: Any = None
    return [Sequence(g, i, cache=none, sampler=none, detok=none) for i in range(g.req.n)]


def run_prefill(policy: BatchPolicy) -> list[Sequence]:
    """Play the runner: prefill the scheduled chunk; a group whose prompt is done starts its choices."""
    step = policy.schedule()
    assert step.prefill is not None
    work = step.prefill
    started = choices(work.group) if work.last else None
    policy.prefilled(work.group, work.end, started)
    return started or []


def names(items: list[Sequence]) -> list[str]:
    return [s.group.req.request_id for s in items]


def test_admission_fills_the_batch_in_arrival_order_and_no_further() -> None:
    policy = BatchPolicy(max_batch_size=3, prefill_chunk=256, queue_timeout_s=60)
    gs = [group(f"r{i}", at=i) for i in range(5)]
    for g in gs:
        policy.add(g)
    assert policy.admit(now=10.0) == gs[:3]
    assert [g.admitted_at for g in gs[:3]] == [10.0] * 3
    assert list(policy.waiting) == gs[3:]
    assert policy.admit(now=11.0) == []  # prefilling groups hold their slots


def test_a_group_takes_as_many_slots_as_it_has_choices() -> None:
    policy = BatchPolicy(max_batch_size=4, prefill_chunk=256, queue_timeout_s=60)
    big, small = group("big", n=3), group("small", n=2, at=1)
    policy.add(big)
    policy.add(small)
    assert policy.admit(now=0) == [big]  # 3 + 2 > 4: the second waits (same tenant: nothing to pause)
    started = run_prefill(policy)
    assert len(started) == 3 and policy.running == started
    policy.decoded(started[:1])  # two choices finished
    assert policy.admit(now=1) == [small]


def test_prefill_runs_in_chunks_oldest_group_first_and_decode_takes_every_running_choice() -> None:
    policy = BatchPolicy(max_batch_size=8, prefill_chunk=4, queue_timeout_s=60)
    a, b = group("a", prompt=10), group("b", prompt=3, at=1)
    policy.add(a)
    policy.add(b)
    policy.admit(now=0)
    spans = []
    while policy.prefilling:
        work = policy.schedule().prefill
        assert work is not None
        spans.append((work.group.req.request_id, work.start, work.end))
        policy.prefilled(work.group, work.end, choices(work.group) if work.last else None)
    assert spans == [("a", 0, 4), ("a", 4, 8), ("a", 8, 10), ("b", 0, 3)]
    step = policy.schedule()
    assert step.prefill is None and names(step.decode) == ["a", "b"]


def test_a_cached_prefix_shortens_the_prefill() -> None:
    """The runner sets `prefilled` to the cached length at admission; the first chunk starts there."""
    policy = BatchPolicy(max_batch_size=8, prefill_chunk=4, queue_timeout_s=60)
    g = group("a", prompt=10)
    policy.add(g)
    policy.admit(now=0)
    g.prefilled = 7
    work = policy.schedule().prefill
    assert work is not None and (work.start, work.end, work.last) == (7, 10, True)


def test_the_tenant_with_fewer_choices_goes_first() -> None:
    policy = BatchPolicy(max_batch_size=2, prefill_chunk=256, queue_timeout_s=60)
    a1 = group("a1", "key-a", at=0)
    policy.add(a1)
    policy.admit(now=0)
    run_prefill(policy)
    a2, a3, b1 = group("a2", "key-a", at=1), group("a3", "key-a", at=2), group("b1", "key-b", at=3)
    for g in (a2, a3, b1):
        policy.add(g)
    assert policy.admit(now=4) == [b1]  # key B has no choice in the batch: it goes before A's older ones


def test_a_full_batch_pauses_the_newest_choice_of_a_tenant_two_slots_ahead() -> None:
    policy = BatchPolicy(max_batch_size=2, prefill_chunk=256, queue_timeout_s=60)
    a1, a2 = group("a1", "key-a", at=0), group("a2", "key-a", at=1)
    for g in (a1, a2):
        policy.add(g)
    policy.admit(now=0)
    a2.admitted_at = 0.5  # a2 joined later: it is the newest
    run_prefill(policy)
    run_prefill(policy)
    b1 = group("b1", "key-b", at=2)
    policy.add(b1)
    assert policy.admit(now=3) == [b1]  # A holds 2, B 0: A's newest choice makes room
    assert names(policy.running) == ["a1"] and names(list(policy.paused)) == ["a2"]
    run_prefill(policy)
    policy.decoded([c for c in policy.running if c.group is not b1])  # b1 finished at its first decode
    assert policy.admit(now=4) == [] and names(policy.running) == ["a1", "a2"]  # the paused choice resumes


def test_no_pause_for_a_tenant_only_one_slot_ahead() -> None:
    policy = BatchPolicy(max_batch_size=2, prefill_chunk=256, queue_timeout_s=60)
    a1, b1 = group("a1", "key-a", at=0), group("b1", "key-b", at=1)
    for g in (a1, b1):
        policy.add(g)
    policy.admit(now=0)
    run_prefill(policy)
    run_prefill(policy)
    a2 = group("a2", "key-a", at=2)
    policy.add(a2)
    assert policy.admit(now=3) == [] and not policy.paused and list(policy.waiting) == [a2]


def test_requests_past_the_queue_timeout_expire_oldest_first() -> None:
    policy = BatchPolicy(max_batch_size=1, prefill_chunk=256, queue_timeout_s=5)
    old, new = group("old", at=0), group("new", at=4)
    policy.add(old)
    policy.add(new)
    assert policy.expired(now=4.9) == []
    assert policy.expired(now=6.0) == [old] and list(policy.waiting) == [new]


def test_aborted_groups_leave_every_queue() -> None:
    policy = BatchPolicy(max_batch_size=2, prefill_chunk=2, queue_timeout_s=60)
    running, prefilling, waiting = group("running", prompt=2), group("prefilling", prompt=9), group("waiting")
    for g in (running, prefilling, waiting):
        policy.add(g)
    policy.admit(now=0)
    run_prefill(policy)
    for g in (running, prefilling, waiting):
        g.aborted = True
    assert policy.drop_aborted() == [prefilling]  # the runner releases its prefix match
    assert policy.idle


def test_a_failed_prefill_frees_its_slot_at_once() -> None:
    policy = BatchPolicy(max_batch_size=1, prefill_chunk=256, queue_timeout_s=60)
    bad, next_ = group("bad"), group("next", at=1)
    policy.add(bad)
    policy.add(next_)
    policy.admit(now=0)
    policy.failed(bad)
    assert bad.aborted and not policy.prefilling
    assert policy.admit(now=1) == [next_]
