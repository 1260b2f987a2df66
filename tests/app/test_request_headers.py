"""Headers that change how a request is read (issue 18), with the fake engine: a body that says it is not JSON
is refused with 415 (docs/parameters.md, the decoding rules), and more than one Authorization header with
400 (docs/security.md)."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.routes.chat import is_json_media_type
from tests.app.live import asgi_request, serving
from tests.app.test_api_fake_engine import CHAT, CHAT_V3, assert_error, body, make_app
from tests.app.test_hardening import PUBLIC

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


# -- Authorization ------------------------------------------------------------------------------------------

RIGHT, ADMIN = "Bearer sk-right", "Bearer adm-right"


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    app = make_app(api_keys=("sk-right",), admin_keys=("adm-right",))
    with TestClient(app) as c:
        yield c


def lines(client: TestClient, method: str, path: str, values: list[str]) -> tuple[int, dict[str, Any]]:
    """A request with one Authorization line per value (an HTTP client would fold them into one line)."""
    headers = [("content-type", "application/json"), *(("authorization", v) for v in values)]
    status, _, raw = client.blocking_portal.call(asgi_request, client.app, method, path, headers,
                                                 json.dumps(body()).encode())
    return status, json.loads(raw)


def refused(status: int, payload: dict[str, Any]) -> None:
    assert status == 400, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["code"] == "multiple_authorization_headers" and "sk-" not in error["message"]


def protected_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every method and path of the app but the public ones (the route table, as test_hardening walks it)."""
    found = []
    for route in client.app.routes:
        if route.path in PUBLIC:
            continue
        path = re.sub(r"\{[^}:]+(:[^}]+)?\}", "some-id", route.path)
        found += [(method, path) for method in sorted(route.methods - {"HEAD", "OPTIONS"})]
    return found


def test_one_authorization_header_still_works(keyed: TestClient) -> None:
    assert lines(keyed, "POST", CHAT, [RIGHT])[0] == 200
    assert lines(keyed, "GET", "/v1/admin/usage", [ADMIN])[0] == 200
    assert lines(keyed, "POST", CHAT, ["Bearer sk-wrong"])[0] == 401


@pytest.mark.parametrize("values", [[RIGHT, "Bearer sk-wrong"], ["Bearer sk-wrong", RIGHT], [RIGHT, RIGHT],
                                    [RIGHT, ""], [ADMIN, RIGHT]])
def test_two_authorization_headers_are_a_400_whatever_their_order(keyed: TestClient, values: list[str]) -> None:
    routes = protected_routes(keyed)
    assert ("POST", CHAT) in routes and ("GET", "/v1/admin/usage") in routes
    for method, path in routes:
        refused(*lines(keyed, method, path, values))


def test_lines_folded_into_one_are_refused_too(keyed: TestClient) -> None:
    """An HTTP client, or a proxy, joins repeated lines with a comma; no Bearer token holds one."""
    folded = keyed.post(CHAT, json=body(), headers=[("Authorization", RIGHT), ("Authorization", "Bearer x")])
    assert_error(folded, 400, code="multiple_authorization_headers")
    refused(*lines(keyed, "POST", CHAT, [f"{RIGHT}, Bearer sk-wrong"]))


def test_the_public_routes_ignore_authorization_headers(keyed: TestClient) -> None:
    for path in ("/health", "/playground/"):
        status, _, _ = keyed.blocking_portal.call(asgi_request, keyed.app, "GET", path,
                                                  [("authorization", RIGHT), ("authorization", "Bearer x")])
        assert status == 200, path


def test_without_keys_two_headers_are_refused_too(client: TestClient) -> None:
    """Without keys the bearer token still names the owner of a session (docs/sessions.md)."""
    refused(*lines(client, "POST", CHAT, ["Bearer a", "Bearer b"]))
    refused(*lines(client, "GET", "/v1/sessions/s1", ["Bearer a", "Bearer b"]))


header_values = st.sampled_from([RIGHT, ADMIN, "Bearer sk-wrong", "", "Basic dXNlcjpwYXNz", "bearer sk-right"]) | \
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@FEW
@given(st.lists(header_values, min_size=2, max_size=4), st.sampled_from([CHAT, CHAT_V3, CHECK, "/v1/models"]))
def test_any_repeated_authorization_is_refused(keyed: TestClient, values: list[str], path: str) -> None:
    refused(*lines(keyed, "GET" if path == "/v1/models" else "POST", path, values))


def test_two_authorization_headers_on_a_real_server() -> None:
    """On the wire, as issue 18 sent them: uvicorn hands both lines to the app, which refuses them."""
    with serving(make_app(api_keys=("sk-right",))) as port:
        for values in ([RIGHT, "Bearer sk-wrong"], ["Bearer sk-wrong", RIGHT]):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                raw = json.dumps(body()).encode()
                connection.putrequest("POST", CHAT)
                for value in values:
                    connection.putheader("Authorization", value)
                connection.putheader("Content-Type", "application/json")
                connection.putheader("Content-Length", str(len(raw)))
                connection.endheaders(raw)
                response = connection.getresponse()
                payload = json.loads(response.read())
            finally:
                connection.close()
            refused(response.status, payload)
