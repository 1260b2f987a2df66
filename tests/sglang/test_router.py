"""Unit tests of the SGLang router: rendezvous session affinity, least-loaded choice, down workers last.

No network: the router only reads the workers' urls, in_flight counts and up state.
"""

from __future__ import annotations

from collections import Counter

import pytest

from engines.sglang.router import Router
from engines.sglang.worker import Worker

URLS = [f"http://127.0.0.1:{port}" for port in (1, 2, 3)]
SESSIONS = [f"keydigest:session-{i}" for i in range(50)]


def make_workers(urls: list[str] = URLS) -> list[Worker]:
    return [Worker(url, connect_timeout_s=1, read_timeout_s=1, retry_s=60) for url in urls]


@pytest.fixture()
def workers() -> list[Worker]:
    return make_workers()


def urls(ws: list[Worker]) -> list[str]:
    return [w.url for w in ws]


def test_no_workers_is_an_error() -> None:
    with pytest.raises(ValueError):
        Router([])


def test_candidates_hold_every_worker_once(workers: list[Worker]) -> None:
    router = Router(workers)
    for session in [None, *SESSIONS[:5]]:
        assert sorted(urls(router.candidates(session))) == sorted(URLS)


def test_session_order_is_stable(workers: list[Worker]) -> None:
    router = Router(workers)
    for session in SESSIONS:
        first = urls(router.candidates(session))
        assert all(urls(router.candidates(session)) == first for _ in range(3))
        # also across router instances and worker list orders (it depends on nothing but key and urls)
        assert urls(Router(list(reversed(workers))).candidates(session)) == first
        assert urls(Router(make_workers()).candidates(session)) == first


def test_sessions_spread_over_workers(workers: list[Worker]) -> None:
    router = Router(workers)
    firsts = Counter(router.candidates(s)[0].url for s in SESSIONS)
    assert len(firsts) >= 2
    assert max(firsts.values()) <= 0.8 * len(SESSIONS)


def test_down_worker_moves_last_and_comes_back(workers: list[Worker]) -> None:
    router = Router(workers)
    session = SESSIONS[0]
    order = router.candidates(session)
    preferred = order[0]
    preferred.mark_down("connection refused")
    assert not preferred.up
    assert router.candidates(session) == order[1:] + [preferred]
    assert router.any_up()
    preferred.mark_up()
    assert preferred.up
    assert router.candidates(session) == order


def test_down_workers_keep_their_preference_order(workers: list[Worker]) -> None:
    router = Router(workers)
    session = SESSIONS[1]
    order = router.candidates(session)
    order[0].mark_down("x")
    order[1].mark_down("y")
    assert router.candidates(session) == [order[2], order[0], order[1]]


def test_removing_a_worker_moves_only_its_sessions(workers: list[Worker]) -> None:
    full = Router(workers)
    before = {s: urls(full.candidates(s)) for s in SESSIONS}
    removed = workers[1]
    smaller = Router([w for w in workers if w is not removed])
    moved = 0
    for session, order in before.items():
        after = urls(smaller.candidates(session))
        # the remaining workers keep their relative order, so each session goes to its next choice
        assert after == [u for u in order if u != removed.url]
        if order[0] != removed.url:
            assert after[0] == order[0]
        else:
            moved += 1
            assert after[0] == order[1]
    assert moved > 0  # the removed worker did own some sessions


def test_adding_a_worker_moves_sessions_only_to_it() -> None:
    small = Router(make_workers(URLS[:2]))
    full = Router(make_workers())
    for session in SESSIONS:
        before, after = small.candidates(session)[0].url, full.candidates(session)[0].url
        assert after in (before, URLS[2])


def test_without_session_least_loaded_first(workers: list[Worker]) -> None:
    router = Router(workers)
    workers[0].in_flight, workers[1].in_flight, workers[2].in_flight = 5, 2, 9
    assert urls(router.candidates(None)) == [URLS[1], URLS[0], URLS[2]]
    workers[1].in_flight = 10
    assert router.candidates(None)[0] is workers[0]


def test_without_session_down_workers_last_even_if_idle(workers: list[Worker]) -> None:
    router = Router(workers)
    workers[0].in_flight, workers[1].in_flight, workers[2].in_flight = 0, 3, 1
    workers[0].mark_down("refused")
    assert router.candidates(None) == [workers[2], workers[1], workers[0]]


def test_without_session_ties_keep_list_order(workers: list[Worker]) -> None:
    assert Router(workers).candidates(None) == workers


def test_any_up(workers: list[Worker]) -> None:
    router = Router(workers)
    assert router.any_up()
    for w in workers[:2]:
        w.mark_down("down")
    assert router.any_up()
    workers[2].mark_down("down")
    assert not router.any_up()
    # all down: still every worker, in preference order, to try as a last resort
    assert sorted(urls(router.candidates(SESSIONS[0]))) == sorted(URLS)
    workers[2].mark_up()
    assert router.any_up()
    assert router.candidates(SESSIONS[0])[0] is workers[2]


def test_worker_url_trailing_slash_is_ignored() -> None:
    a = Router(make_workers(URLS))
    b = Router(make_workers([u + "/" for u in URLS]))
    for session in SESSIONS[:10]:
        assert urls(a.candidates(session)) == urls(b.candidates(session))
