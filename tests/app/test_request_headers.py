"""Headers that change how a request is read (issue 18), with the fake engine: a body that says it is not JSON
is refused with 415 (docs/parameters.md, the decoding rules)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.routes.chat import is_json_media_type
from tests.app.test_api_fake_engine import CHAT, CHAT_V3, assert_error, body, make_app

CHECK = "/v1/playground/check"
ROUTES = [CHAT, CHAT_V3, CHECK]
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as c:
        yield c


def post(client: TestClient, path: str, content_type: str | None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post(path, content=json.dumps(body()).encode() if raw is None else raw, headers=headers)


# -- Content-Type -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8",
                                          "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=xyz", "application/xml", "text/json",
                                          "application/json; charset=latin-1", "application/jsonx", "+json",
                                          "application/+json", "", "application/json, text/plain"])
def test_a_body_labelled_as_something_else_is_a_415(client: TestClient, path: str, content_type: str) -> None:
    """A valid JSON body all the same: the label decides, as it does at OpenAI."""
    error = assert_error(post(client, path, content_type), 415, code="unsupported_media_type",
                         type="invalid_request_error")
    assert f"'{content_type}'" in error["message"] and "application/json" in error["message"]


def test_curl_d_form_encoding_and_multipart_are_refused_before_the_body_is_read(client: TestClient) -> None:
    form = client.post(CHAT, data={"model": "fake-model"})  # what `curl -d model=...` sends
    assert_error(form, 415, code="unsupported_media_type")
    multipart = client.post(CHAT, files={"file": ("body.json", json.dumps(body()).encode(), "application/json")})
    error = assert_error(multipart, 415, code="unsupported_media_type")
    assert "multipart/form-data" in error["message"]
    # refused before reading: a body that is not JSON at all gets the 415, not a parse error
    assert_error(post(client, CHAT, "text/plain", b"model=fake-model&messages=hi"), 415)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "Application/JSON;Charset=UTF-8", "application/json;charset=\"utf8\"",
                                          " application/json ", "application/vnd.lodestar+json"])
def test_json_with_or_without_a_label_is_read(client: TestClient, path: str, content_type: str | None) -> None:
    r = post(client, path, content_type)
    assert r.status_code == 200, r.text


def test_a_long_content_type_is_named_clipped(client: TestClient) -> None:
    error = assert_error(post(client, CHAT, "text/" + "x" * 5000), 415)
    assert len(error["message"]) < 300 and "text/xxx" in error["message"] and "…" in error["message"]


def test_a_missing_content_type_still_needs_valid_json(client: TestClient) -> None:
    assert_error(post(client, CHAT, None, b"model=fake-model"), 400, code="invalid_json")


def test_auth_comes_before_the_content_type() -> None:
    with TestClient(make_app(api_keys=("sk-right",))) as c:
        assert_error(post(c, CHAT, "text/plain"), 401, code="missing_api_key")


token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)
params = st.lists(st.tuples(token, token).map(lambda kv: f"; {kv[0]}={kv[1]}"), max_size=2).map("".join)
# Any media type whose subtype is neither json nor a +json suffix, with any parameters.
not_json = st.tuples(st.sampled_from(["text", "application", "multipart", "image", "x"]), token, params).filter(
    lambda t: t[1] != "json" and not t[1].endswith("+json")).map(lambda t: f"{t[0]}/{t[1]}{t[2]}")
# JSON in the spellings a client may use: case, spaces, a UTF-8 charset, other parameters, a +json suffix.
json_types = st.tuples(st.sampled_from(["json", "JSON", "vnd.example+json", "problem+json"]),
                       st.sampled_from(["", "; charset=utf-8", "; charset=UTF-8", ";charset=utf8", "; v=1"]),
                       st.sampled_from(["", " ", "  "]), st.booleans()).map(
    lambda t: f"{t[2]}{'Application' if t[3] else 'application'}/{t[0]}{t[1]}{t[2]}")


@FEW
@given(not_json, st.sampled_from(ROUTES))
def test_any_other_media_type_is_a_415_naming_it(client: TestClient, content_type: str, path: str) -> None:
    assert not is_json_media_type(content_type)
    error = assert_error(post(client, path, content_type), 415, code="unsupported_media_type")
    assert content_type.strip()[:50] in error["message"]


@FEW
@given(json_types, st.sampled_from(ROUTES))
def test_json_media_types_are_read(client: TestClient, content_type: str, path: str) -> None:
    assert is_json_media_type(content_type)
    assert post(client, path, content_type).status_code == 200
