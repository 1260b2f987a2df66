"""A client's strings quoted in error messages are clipped (issue 18: a 1 MiB model name came back as a 1 MiB
error): each quoted value to its first 100 characters and "…", and any message to 1,000 characters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from core.errors import MESSAGE_CHARS, PARAM_CHARS, APIError, clip
from tests.app.test_api_fake_engine import CHAT, assert_error, body, make_app

MIB = 1 << 20
TOOL = {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as c:
        yield c


def test_clip() -> None:
    assert clip("short") == "short" and clip("x" * 100) == "x" * 100
    assert clip("x" * 101) == "x" * 100 + "…" and clip("abc", 2) == "ab…"


def test_every_error_message_and_param_is_bounded() -> None:
    error = APIError(400, "m" * MIB, param="p" * MIB)
    assert len(error.message) == MESSAGE_CHARS + 1 and error.message.endswith("…")
    assert error.param is not None and len(error.param) == PARAM_CHARS + 1
    assert APIError(400, "short", param=None).param is None


def test_a_one_mib_model_name_gives_a_small_404(client: TestClient) -> None:
    r = client.post(CHAT, json=body(model="m" * MIB))
    error = assert_error(r, 404, param="model", code="model_not_found")
    assert f"'{'m' * 100}…'" in error["message"]
    assert len(r.content) < 1000


# Where a client's string lands in an error message: a body builder and the status it gets.
PLACES: dict[str, tuple[Callable[[str], dict[str, Any]], int]] = {
    "model": (lambda s: body(model=s), 404),
    "role": (lambda s: body(messages=[{"role": s, "content": "hi"}]), 400),
    "content part type": (lambda s: body(messages=[{"role": "user", "content": [{"type": s}]}]), 400),
    "reasoning_effort": (lambda s: body(reasoning_effort=s), 400),
    "response_format type": (lambda s: body(response_format={"type": s}), 400),
    "tool name": (lambda s: body(tools=[{"type": "function", "function": {"name": s + "!"}}]), 400),
    "tool_choice name": (lambda s: body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": s}}),
                         400),
    "schema type": (lambda s: body(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": s}}}]), 400),
}


@pytest.mark.parametrize("place", PLACES)
def test_each_place_clips_a_long_string(client: TestClient, place: str) -> None:
    make, status = PLACES[place]
    long = "q" * 50_000
    r = client.post(CHAT, json=make(long))
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert len(error["message"]) <= 400 and "q" * 100 + "…" in error["message"], error["message"][:500]


long_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=3000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(PLACES)), long_text | st.integers(101, 20_000).map(lambda n: "z" * n))
def test_any_string_anywhere_gives_a_bounded_error(client: TestClient, place: str, text: str) -> None:
    make, _ = PLACES[place]
    r = client.post(CHAT, content=json.dumps(make(text)), headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text[:500]
    if r.status_code >= 400:
        error = r.json()["error"]
        assert len(error["message"]) <= 600 and len(error["param"] or "") <= PARAM_CHARS + 1, error
        if len(text) > 100:  # at most the first 100 characters are quoted
            assert text[:101] not in error["message"], error["message"]


def test_unknown_paths_are_clipped(client: TestClient) -> None:
    r = client.get("/v1/" + "p" * 5000)
    error = assert_error(r, 404, code="unknown_url")
    assert len(error["message"]) < 200 and error["message"].endswith("…")
    error = assert_error(client.delete("/v1/models"), 405, code="method_not_allowed")
    assert error["message"] == "Method DELETE is not allowed on /v1/models"


def test_short_strings_are_quoted_whole(client: TestClient) -> None:
    error = assert_error(client.post(CHAT, json=body(model="gpt-9")), 404, param="model")
    assert "'gpt-9' does not exist" in error["message"]
    error = assert_error(client.post(CHAT, json=body(messages=[{"role": "bot", "content": "hi"}])), 400,
                         param="messages[0].role")
    assert "Unsupported message role 'bot'" in error["message"]
