"""logit_bias at the HTTP surface: OpenAI's bounds (at most max_logit_bias entries, ids inside the vocabulary,
values in [-100, 100]), each failure a 400 naming the param, an oversized object refused before it is built,
and a valid one handed to the engine as {token id: bias}."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from chat.validation import logit_bias
from core.errors import APIError
from core.protocol import request_decoder
from tests.app.test_api_fake_engine import CHAT, USER, make_app
from tests.fakes import VOCAB_SIZE, FakeEngine

VOCAB = 1000


def parse(value: Any, *, limit: int = 300, vocab: int | None = VOCAB) -> dict[int, float]:
    """logit_bias() on the raw value as the request decoder keeps it (`value` as JSON text if a str)."""
    text = value if isinstance(value, str) else json.dumps(value)
    req = request_decoder.decode(b'{"model": "m", "messages": [], "logit_bias": ' + text.encode() + b"}")
    return logit_bias(req.logit_bias, limit, vocab)


def refused(value: Any, **kw: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(value, **kw)
    error = caught.value
    assert error.status == 400 and error.param == "logit_bias"
    return error


def entries(count: int, start: int = 0) -> dict[str, float]:
    return {str(start + i): 1.0 for i in range(count)}


# -- the parser ------------------------------------------------------------------------------------------
def test_valid_object_becomes_token_ids_and_floats() -> None:
    assert parse({"0": 100, "5": -100, "999": 0.5, "7": -2.25}) == {0: 100.0, 5: -100.0, 999: 0.5, 7: -2.25}
    assert parse('{ "1" : 1e1 ,"2":-0 }') == {1: 10.0, 2: 0.0}  # any JSON spacing and number form


def test_absent_null_and_empty_mean_no_bias() -> None:
    assert logit_bias(request_decoder.decode(b'{"model": "m", "messages": []}').logit_bias, 300, VOCAB) == {}
    assert parse(None) == {}
    assert parse({}) == {}
    assert parse({}, limit=0) == {}


def test_300_entries_are_accepted_and_301_refused() -> None:
    assert len(parse(entries(300))) == 300
    error = refused(entries(301))
    assert "more than 300 entries" in error.message and error.code == "invalid_value"


def test_the_limit_is_the_setting() -> None:
    assert len(parse(entries(2), limit=2)) == 2
    assert "more than 2 entries" in refused(entries(3), limit=2).message
    assert "more than 0 entries" in refused({"1": 1}, limit=0).message


@pytest.mark.parametrize("value", [100.5, -101, 1e400, -1e400, 100.0000001])
def test_values_outside_minus_100_to_100_are_refused(value: float) -> None:
    text = json.dumps({"7": value}).replace("Infinity", "1e400")  # JSON has no infinity: an overflowing number
    error = refused(text)
    assert "[-100, 100]" in error.message and "'7'" in error.message


@pytest.mark.parametrize("value", ["5", None, True, [1], {"a": 1}])
def test_values_must_be_numbers(value: Any) -> None:
    error = refused({"3": value})
    assert error.code == "invalid_type" and "'3'" in error.message


@pytest.mark.parametrize("key", ["a", "1.5", "1e3", " 1", "+1", "1_0", "0x10", "", "١", "-a"])
def test_keys_must_be_decimal_integers(key: str) -> None:
    error = refused({key: 1})
    assert "decimal integers" in error.message and f"'{key}'" in error.message


@pytest.mark.parametrize("key", ["1000", "-1", "-0", "99999999999999999999"])
def test_keys_outside_the_vocabulary_are_refused(key: str) -> None:
    error = refused({key: 1})
    assert f"key '{key}' is not a token id of this model (ids are 0 to {VOCAB - 1})" in error.message


def test_the_last_id_is_inside_and_an_unknown_vocabulary_checks_only_the_sign() -> None:
    assert parse({str(VOCAB - 1): 1}) == {VOCAB - 1: 1.0}
    assert parse({"123456789": 1}, vocab=None) == {123456789: 1.0}
    assert "ids are 0 or more" in refused({"-3": 1}, vocab=None).message


@pytest.mark.parametrize("key", ["9" * 100, "x" * 5000, "\\\"" * 5000])
def test_long_keys_are_refused_unread_and_quoted_truncated(key: str) -> None:
    error = refused('{"' + key + '": 1}')
    assert "is not a token id" in error.message
    assert len(error.message) < 150  # the key is cut to its first characters


def test_echoed_keys_are_truncated() -> None:
    error = refused({"a" * 60: 1})
    assert "'" + "a" * 32 + "...'" in error.message and "a" * 33 not in error.message


def test_escaped_keys_read_as_json_strings_and_a_repeated_id_keeps_the_last_value() -> None:
    assert parse('{"\\u0031\\u0032": 3}') == {12: 3.0}
    assert parse('{"7": 1, "07": 2}') == {7: 2.0}
    assert parse('{"7": 1, "7": -1}') == {7: -1.0}


@pytest.mark.parametrize("value", [[1, 2], "\"x\"", 5, True])
def test_not_an_object_is_an_invalid_type(value: Any) -> None:
    assert refused(value).code == "invalid_type"


def test_a_huge_object_is_refused_before_it_is_built() -> None:
    """4.5 million entries in 30 MiB (under the 32 MiB body limit): the decoder only skips over them, and the
    check stops at entry 301."""
    raw = b"{" + b'"12":1,' * 4_500_000 + b'"0":1}'
    req = request_decoder.decode(b'{"model": "m", "messages": [], "logit_bias": ' + raw + b"}")
    started = time.perf_counter()
    with pytest.raises(APIError, match="more than 300 entries"):
        logit_bias(req.logit_bias, 300, VOCAB)
    assert time.perf_counter() - started < 0.25  # 301 entries read (about a millisecond), not 4.5 million


# -- through the app (fake engine) -----------------------------------------------------------------------
@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(make_app(engine)) as c:
        yield c


def chat(client: TestClient, bias: Any, path: str = CHAT) -> Any:
    return client.post(path, json={"model": "fake", "messages": USER, "max_tokens": 3, "logit_bias": bias})


def test_fake_model_vocabulary() -> None:
    assert VOCAB_SIZE == VOCAB


def test_valid_bias_reaches_the_engine(client: TestClient, engine: FakeEngine) -> None:
    response = chat(client, {"11": 100, "2": -100, "999": 0.25})
    assert response.status_code == 200, response.text
    assert engine.requests[-1].sampling.logit_bias == {11: 100.0, 2: -100.0, 999: 0.25}
    assert chat(client, None).status_code == 200
    assert engine.requests[-1].sampling.logit_bias == {}


@pytest.mark.parametrize(("bias", "words"), [
    (entries(301), "more than 300 entries"),
    ({"1": 100.5}, "[-100, 100], got 100.5 for '1'"),
    ({"1": -101}, "[-100, 100], got -101.0 for '1'"),
    ({"abc": 1}, "decimal integers, got 'abc'"),
    ({"1000": 1}, "key '1000' is not a token id of this model (ids are 0 to 999)"),
    ({"-1": 1}, "key '-1' is not a token id"),
    ({"4": "high"}, "values must be numbers"),
    ([4, 5], "must be an object"),
])
def test_each_bound_is_an_openai_shaped_400(client: TestClient, engine: FakeEngine, bias: Any, words: str) -> None:
    response = chat(client, bias)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "logit_bias" and error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert engine.requests == []  # refused before the engine saw anything


def test_300_entries_are_served(client: TestClient, engine: FakeEngine) -> None:
    assert chat(client, entries(300)).status_code == 200
    assert len(engine.requests[-1].sampling.logit_bias) == 300


def test_100000_entries_are_a_fast_400_not_a_500(client: TestClient) -> None:
    body = msgspec.json.encode({"model": "fake", "messages": USER, "logit_bias": entries(100_000)})
    started = time.perf_counter()
    response = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 400 and response.json()["error"]["param"] == "logit_bias"
    assert elapsed < 1.0, elapsed


def test_max_logit_bias_setting_applies(engine: FakeEngine) -> None:
    with TestClient(make_app(engine, max_logit_bias=2)) as client:
        assert chat(client, entries(2)).status_code == 200
        response = chat(client, entries(3))
        assert response.status_code == 400 and "more than 2 entries" in response.json()["error"]["message"]


def test_the_playground_check_refuses_it_too(client: TestClient) -> None:
    response = chat(client, {"5000": 1}, path="/v1/playground/check")
    assert response.status_code == 400 and response.json()["error"]["param"] == "logit_bias"
    assert chat(client, {"5": 1}, path="/v1/playground/check").status_code == 200



# -- any value at all ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient, FakeEngine]]:
    engine = FakeEngine()
    with TestClient(make_app(engine)) as c:
        yield c, engine


keys = st.integers(-3, VOCAB + 2).map(str) | st.text(max_size=8)
values = st.floats(-102, 102) | st.integers(-200, 200) | st.none() | st.text(max_size=3) | st.booleans()
biases = st.dictionaries(keys, values, max_size=6) | st.none() | st.integers() | st.lists(st.integers(), max_size=3)


@settings(max_examples=150, deadline=None)
@given(biases)
def test_any_logit_bias_is_served_within_bounds_or_refused_naming_it(served: tuple[TestClient, FakeEngine],
                                                                     bias: Any) -> None:
    client, engine = served
    before = len(engine.requests)
    response = chat(client, bias)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["param"] == "logit_bias"
        assert len(engine.requests) == before
        return
    sent = engine.requests[-1].sampling.logit_bias
    assert all(0 <= token < VOCAB and -100 <= value <= 100 for token, value in sent.items())
    assert len(sent) == len({int(k) for k in bias or {}})
