"""Per-key limits and usage metering: KeyLimiter over a SQLite store on a fake clock, then through the app
with a fake engine. (Across processes and on PostgreSQL: tests/store and tests/sglang/test_scale_out.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app.limits import KeyLimiter
from core.config import build_settings
from core.errors import APIError
from core.replies import CompletionTokensDetails, PromptTokensDetails, Usage
from store.base import open_store
from tests.app.test_api_fake_engine import CHAT, assert_error, body, make_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def usage(prompt: int, completion: int, cached: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
                 completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0))


def with_limiter(path: Path, scenario: Callable[[KeyLimiter], Awaitable[Any]], clock: Clock | None = None,
                 **limits: int) -> Any:
    """Run `scenario` on a limiter over the SQLite store at `path` (an event loop of its own)."""
    settings = build_settings({"max_concurrent_per_key": 0, **limits}).limits

    async def main() -> Any:
        store = await open_store(None, path, timeout_s=5, pool_size=1)
        try:
            return await scenario(KeyLimiter(store, settings, clock or Clock()))
        finally:
            await store.close()
    return asyncio.run(main())


async def refused(limiter: KeyLimiter, key: str) -> APIError:
    with pytest.raises(APIError) as err:
        await limiter.admit(key)
    assert err.value.status == 429 and err.value.type == "rate_limit_error"
    return err.value


def test_concurrency_per_key_frees_on_release(tmp_path: Path) -> None:
    async def scenario(limiter: KeyLimiter) -> None:
        first, _ = await limiter.admit("a"), await limiter.admit("a")
        assert (await refused(limiter, "a")).code == "concurrency_limit_exceeded"
        await limiter.admit("b")  # another key has its own slots
        first.release()
        first.release()  # idempotent: releasing twice frees one slot, not two
        await limiter.admit("a")
        assert (await refused(limiter, "a")).code == "concurrency_limit_exceeded"
    with_limiter(tmp_path / "db", scenario, max_concurrent_per_key=2)


def test_requests_per_minute_is_a_window_of_seconds_with_retry_after(tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(limiter: KeyLimiter) -> None:
        (await limiter.admit("a")).release()
        clock.now += 20
        (await limiter.admit("a")).release()
        error = await refused(limiter, "a")
        assert error.code == "rate_limit_exceeded" and "(RPM)" in error.message
        assert error.headers["Retry-After"] == "40"  # the first admission leaves the window 60 s after it
        clock.now += 40
        await limiter.admit("a")
    with_limiter(tmp_path / "db", scenario, clock, requests_per_minute=2)


def test_tokens_per_minute_counts_finished_usage_before_it_is_written(tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(limiter: KeyLimiter) -> None:
        permit = await limiter.admit("a")
        permit.finished(usage(60, 30))
        (await limiter.admit("a")).finished(usage(5, 10))  # 105 tokens now: over, not yet in the store
        error = await refused(limiter, "a")
        assert "(TPM)" in error.message and error.headers["Retry-After"] == "60"
        await limiter.flush()
        assert "(TPM)" in (await refused(limiter, "a")).message  # the same once written
        clock.now += 60
        await limiter.admit("a")
        metered = (await limiter.usage())["a"]
        assert (metered.requests, metered.prompt_tokens, metered.completion_tokens) == (3, 65, 40)
    with_limiter(tmp_path / "db", scenario, clock, tokens_per_minute=100)


def test_rate_limits_through_the_app_per_key_and_metered_for_admins() -> None:
    app = make_app(api_keys=("sk-alpha-0001", "sk-bravo-0002"), admin_keys=("adm-secret-0003",),
                   requests_per_minute=2)
    alpha, bravo = ({"Authorization": f"Bearer {k}"} for k in ("sk-alpha-0001", "sk-bravo-0002"))
    with TestClient(app) as c:
        used = [c.post(CHAT, json=body(), headers=alpha).json()["usage"] for _ in range(2)]
        r = c.post(CHAT, json=body(), headers=alpha)
        assert_error(r, 429, code="rate_limit_exceeded", type="rate_limit_error")
        assert int(r.headers["retry-after"]) >= 1
        assert c.post(CHAT, json=body(stream=True), headers=bravo).status_code == 200

        assert_error(c.get("/v1/admin/usage", headers=alpha), 403, code="admin_key_required")
        assert_error(c.get("/v1/admin/usage"), 401, code="missing_api_key")
        report = c.get("/v1/admin/usage", headers={"Authorization": "Bearer adm-secret-0003"})
        assert report.status_code == 200
        rows = {row["key"]: row for row in report.json()["data"]}
    assert set(rows) == {"sk-...0001", "sk-...0002"}  # keys are shown as hints, never in full
    a = rows["sk-...0001"]
    assert a["requests"] == 2  # the refused request is not metered
    assert a["prompt_tokens"] == sum(u["prompt_tokens"] for u in used)
    assert a["completion_tokens"] == sum(u["completion_tokens"] for u in used)
    assert a["total_tokens"] == a["prompt_tokens"] + a["completion_tokens"]
    assert rows["sk-...0002"]["requests"] == 1 and rows["sk-...0002"]["completion_tokens"] > 0


def test_admin_routes_are_off_without_admin_keys() -> None:
    with TestClient(make_app()) as c:
        assert_error(c.get("/v1/admin/usage"), 403, code="admin_disabled", type="permission_error")


def test_admin_and_api_keys_must_differ() -> None:
    from core.config import build_settings
    from core.settings import SettingsError

    with pytest.raises(SettingsError, match="admin key"):
        build_settings({"api_keys": ["same"], "admin_keys": ["same"]})


def test_usage_increments_are_added_to_the_stored_totals(tmp_path: Path) -> None:
    async def first(limiter: KeyLimiter) -> None:
        (await limiter.admit("a")).finished(usage(10, 5, cached=4))
        await limiter.flush()
        await limiter.flush()  # nothing new: nothing added twice

    async def second(limiter: KeyLimiter) -> Any:
        (await limiter.admit("a")).finished(usage(1, 1))
        return (await limiter.usage())["a"]
    with_limiter(tmp_path / "db", first)
    totals = with_limiter(tmp_path / "db", second)  # another process, as far as the store knows
    assert (totals.requests, totals.prompt_tokens, totals.cached_tokens) == (2, 11, 4)


def test_a_failed_write_keeps_the_increments_for_the_next(tmp_path: Path) -> None:
    from store.base import StoreUnavailable

    async def scenario(limiter: KeyLimiter) -> Any:
        (await limiter.admit("a")).finished(usage(7, 3))
        real = limiter.store.add_usage

        async def unreachable(*args: Any) -> None:
            raise StoreUnavailable("down")
        limiter.store.add_usage = unreachable  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await limiter.flush()
        limiter.store.add_usage = real  # type: ignore[method-assign]
        return (await limiter.usage())["a"]
    totals = with_limiter(tmp_path / "db", scenario)
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, 7, 3)


def stored_requests(path: Path) -> int:
    """What the store holds, read as another process would."""
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT coalesce(sum(requests), 0) FROM key_usage").fetchone()[0]


def test_usage_per_key_survives_a_restart(tmp_path) -> None:
    path = str(tmp_path / "db.sqlite3")
    admin = {"Authorization": "Bearer adm-usage"}

    done = 0

    def run(requests: int) -> dict:
        app = make_app(api_keys=("sk-usage-1111",), admin_keys=("adm-usage",), sessions_path=path)
        with TestClient(app) as client:
            for _ in range(requests):
                r = client.post(CHAT, json=body(), headers={"Authorization": "Bearer sk-usage-1111"})
                assert r.status_code == 200
            # written while serving, about once a second: a kill -9 would lose at most that
            deadline = time.monotonic() + 5
            while stored_requests(Path(path)) < requests + done:
                assert time.monotonic() < deadline, "usage not written while the app runs"
                time.sleep(0.05)
            return client.get("/v1/admin/usage", headers=admin).json()["data"][0]

    first = run(2)
    done = 2
    second = run(1)  # a new process, as far as the app knows: totals come from the database
    assert first["key"] == second["key"] == "sk-...1111"
    assert second["requests"] == 3 and second["prompt_tokens"] == first["prompt_tokens"] * 3 // 2


def test_request_scope_releases_its_permit_and_lease_once_and_never_leaks(tmp_path: Path) -> None:
    """The chat route's one scope: a busy session gives its permit back; release twice frees once."""
    from types import SimpleNamespace

    from app.auth import Caller
    from app.routes.chat import RequestScope
    from core.protocol import request_decoder

    released: list[str] = []

    class Sessions:
        async def acquire(self, owner: str, session_id: str) -> object:
            if session_id == "busy":
                raise APIError(409, "busy", code="session_busy")
            return SimpleNamespace(release=lambda: released.append(session_id), transcript=None)

    async def scenario(limiter: KeyLimiter) -> None:
        state = SimpleNamespace(limits=limiter, sessions=Sessions())
        caller = Caller(tenant="a", owner="a")
        req = request_decoder.decode(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
        with pytest.raises(APIError):
            await RequestScope.enter(state, caller, "busy", req)  # type: ignore[arg-type]
        scope = await RequestScope.enter(state, caller, "s1", req)  # type: ignore[arg-type]
        assert (await refused(limiter, "a")).code == "concurrency_limit_exceeded"  # the failed one gave back
        scope.release()
        scope.release()
        assert released == ["s1"]
        await limiter.admit("a")
        assert (await refused(limiter, "a")).code == "concurrency_limit_exceeded"  # one slot freed, not two
    with_limiter(tmp_path / "db", scenario, max_concurrent_per_key=1)
