"""The heap trimmer: a thread that gives freed memory back to the OS on a timer, and stops with the app."""

from __future__ import annotations

import time

from app.heap import HeapTrimmer
from tests.app.test_api_fake_engine import make_app


def test_trims_on_its_interval_and_stops() -> None:
    trimmer = HeapTrimmer(0.02)
    trimmer.start()
    deadline = time.monotonic() + 5
    while trimmer.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    assert trimmer.trims >= 3 and trimmer.seconds > 0
    assert trimmer._thread is not None and not trimmer._thread.is_alive()


def test_zero_turns_it_off() -> None:
    trimmer = HeapTrimmer(0)
    trimmer.start()
    assert trimmer._thread is None
    trimmer.stop()


def test_the_app_runs_it_and_reports_it_in_metrics() -> None:
    from litestar.testing import TestClient

    with TestClient(make_app(heap_trim_interval_s=0.02)) as client:
        heap = client.app.state.heap
        deadline = time.monotonic() + 5
        while heap.trims < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = client.get("/metrics").text.splitlines()
    assert any(line.startswith("lodestar_heap_trims_total ") and float(line.split()[1]) >= 1 for line in lines)
    assert not heap._thread.is_alive()  # stopped with the app
