"""Random and malformed bodies at the chat route (fake engine): always a response, never a 5xx, and every
error OpenAI-shaped. Bounded: a fixed number of examples per property."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from tests.app.test_api_fake_engine import CHAT, make_app
from tests.fakes import VOCAB_SIZE

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=25)
FIELDS = ["model", "messages", "temperature", "top_p", "n", "stream", "stop", "max_tokens", "max_completion_tokens",
          "logprobs", "top_logprobs", "seed", "tools", "tool_choice", "response_format", "stream_options",
          "reasoning_effort", "presence_penalty", "frequency_penalty", "logit_bias", "user", "parallel_tool_calls"]
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "robot"])
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "audio"])},
                              optional={"text": json_values, "image_url": json_values})
messages = st.lists(st.fixed_dictionaries({"role": roles}, optional={
    "content": st.none() | st.text(max_size=30) | st.lists(parts, max_size=3), "name": json_values,
    "tool_calls": json_values, "tool_call_id": json_values}), max_size=4)
# Each field is either a plausible value or anything at all, so that some bodies pass validation and reach
# the pipeline and the engine, and the rest fail at every possible check.
PLAUSIBLE = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "n": st.integers(1, 3),
    "stream": st.booleans(), "stop": st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3),
                                                                               max_size=3),
    "max_tokens": st.integers(1, 20), "max_completion_tokens": st.integers(1, 20), "logprobs": st.booleans(),
    "seed": st.integers(0, 2**31), "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "user": st.text(max_size=10), "parallel_tool_calls": st.booleans(),
    # validated, no longer ignored: ids around both ends of the fake vocabulary, values around ±100
    "logit_bias": st.dictionaries(st.integers(-2, VOCAB_SIZE + 1).map(str), st.floats(-101, 101), max_size=4),
}
user_turn = st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=30)})
near_valid = st.fixed_dictionaries(
    {"model": st.sampled_from(["fake-model", "fake", "other"]),
     "messages": st.lists(user_turn, min_size=1, max_size=2) | messages},
    optional={name: (PLAUSIBLE[name] | json_values) if name in PLAUSIBLE else json_values for name in FIELDS[2:]})

STATUSES: dict[str, list[int]] = {}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as c:
        yield c
    # the near-valid bodies reach the pipeline, not just the decoder: some are served, some refused
    near = STATUSES.get("near", [])
    assert 200 in near and 400 in near, sorted(set(near))


def check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error


@FUZZ
@given(json_values)
def test_any_json_value_is_answered_without_a_5xx(client: TestClient, value: Any) -> None:
    check(client.post(CHAT, content=json.dumps(value), headers={"content-type": "application/json"}))


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_are_answered_without_a_5xx(client: TestClient, raw: bytes) -> None:
    check(client.post(CHAT, content=raw, headers={"content-type": "application/json"}))


@FUZZ
@given(near_valid)
def test_near_valid_requests_are_served_or_refused_cleanly(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post(CHAT, content=json.dumps(body), headers={"content-type": "application/json"})
    check(response)
    STATUSES.setdefault("near", []).append(response.status_code)
    if response.status_code == 200 and not body.get("stream"):
        assert response.json()["object"] == "chat.completion"
