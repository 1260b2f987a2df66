"""Per-key limits and usage metering: KeyLimiter on a fake clock, then through the app with a fake engine."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.limits import KeyLimiter
from core.errors import APIError
from core.replies import CompletionTokensDetails, PromptTokensDetails, Usage
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


def refused(limiter: KeyLimiter, key: str) -> APIError:
    with pytest.raises(APIError) as err:
        limiter.admit(key)
    assert err.value.status == 429 and err.value.type == "rate_limit_error"
    return err.value


def test_concurrency_per_key_frees_on_release() -> None:
    limiter = KeyLimiter(max_concurrent=2, requests_per_minute=0, tokens_per_minute=0, clock=Clock())
    first, _ = limiter.admit("a"), limiter.admit("a")
    assert refused(limiter, "a").code == "concurrency_limit_exceeded"
    limiter.admit("b")  # another key has its own slots
    first.release()
    first.release()  # idempotent: releasing twice frees one slot, not two
    limiter.admit("a")
    assert refused(limiter, "a").code == "concurrency_limit_exceeded"


def test_requests_per_minute_is_a_sliding_window_with_retry_after() -> None:
    clock = Clock()
    limiter = KeyLimiter(max_concurrent=0, requests_per_minute=2, tokens_per_minute=0, clock=clock)
    limiter.admit("a").release()
    clock.now += 20
    limiter.admit("a").release()
    error = refused(limiter, "a")
    assert error.code == "rate_limit_exceeded" and "(RPM)" in error.message
    assert error.headers["Retry-After"] == "40"  # the first admission leaves the window 60 s after it
    clock.now += 40
    limiter.admit("a")


def test_tokens_per_minute_counts_finished_usage() -> None:
    clock = Clock()
    limiter = KeyLimiter(max_concurrent=0, requests_per_minute=0, tokens_per_minute=100, clock=clock)
    permit = limiter.admit("a")
    permit.finished(usage(60, 30))
    limiter.admit("a").finished(usage(5, 10))  # 105 tokens now: over
    error = refused(limiter, "a")
    assert "(TPM)" in error.message and error.headers["Retry-After"] == "60"
    clock.now += 60
    limiter.admit("a")
    metered = limiter.usage()["a"]
    assert (metered.requests, metered.prompt_tokens, metered.completion_tokens) == (3, 65, 40)


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


def test_changed_totals_are_handed_out_once_and_restored_from_the_store(tmp_path) -> None:
    from app.usage_store import UsageStore

    limiter = KeyLimiter(max_concurrent=0, requests_per_minute=0, tokens_per_minute=0, clock=Clock())
    permit = limiter.admit("a")
    permit.finished(usage(10, 5, cached=4))
    changed = limiter.take_changed()
    assert list(changed) == ["a"] and changed["a"].prompt_tokens == 10 and changed["a"].requests == 1
    assert limiter.take_changed() == {}  # nothing new since
    store = UsageStore(tmp_path / "db.sqlite3")
    store.save(changed)
    store.close()
    again = KeyLimiter(max_concurrent=0, requests_per_minute=0, tokens_per_minute=0, clock=Clock())
    again.restore(UsageStore(tmp_path / "db.sqlite3").load())
    again.admit("a").finished(usage(1, 1))
    assert again.usage()["a"].requests == 2 and again.usage()["a"].prompt_tokens == 11
    assert again.usage()["a"].cached_tokens == 4


def test_usage_per_key_survives_a_restart(tmp_path) -> None:
    from app.usage_store import UsageStore

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
            while sum(u.requests for u in UsageStore(Path(path)).load().values()) < requests + done:
                assert time.monotonic() < deadline, "usage not written while the app runs"
                time.sleep(0.05)
            return client.get("/v1/admin/usage", headers=admin).json()["data"][0]

    first = run(2)
    done = 2
    second = run(1)  # a new process, as far as the app knows: totals come from the database
    assert first["key"] == second["key"] == "sk-...1111"
    assert second["requests"] == 3 and second["prompt_tokens"] == first["prompt_tokens"] * 3 // 2


def test_request_scope_releases_its_permit_and_lease_once_and_never_leaks() -> None:
    """The chat route's one scope: a busy session gives its permit back; release twice frees once."""
    import asyncio
    from types import SimpleNamespace

    from app.auth import Caller
    from app.routes.chat import RequestScope
    from core.protocol import request_decoder

    limiter = KeyLimiter(max_concurrent=1, requests_per_minute=0, tokens_per_minute=0, clock=Clock())
    released: list[str] = []

    class Sessions:
        async def acquire(self, owner: str, session_id: str) -> object:
            if session_id == "busy":
                raise APIError(409, "busy", code="session_busy")
            return SimpleNamespace(release=lambda: released.append(session_id), transcript=None)

    state = SimpleNamespace(limits=limiter, sessions=Sessions())
    caller = Caller(tenant="a", owner="a")
    req = request_decoder.decode(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    with pytest.raises(APIError):
        asyncio.run(RequestScope.enter(state, caller, "busy", req))
    scope = asyncio.run(RequestScope.enter(state, caller, "s1", req))  # the failed one left the slot free
    assert refused(limiter, "a").code == "concurrency_limit_exceeded"
    scope.release()
    scope.release()
    assert released == ["s1"]
    limiter.admit("a")
    assert refused(limiter, "a").code == "concurrency_limit_exceeded"  # one slot freed, not two
