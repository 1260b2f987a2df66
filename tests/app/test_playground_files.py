"""The playground's public files (app/routes/playground.py): any path at all is a file of the page or a clean
404, never a 5xx and never a file from outside the page's folder.

Requests are made as raw ASGI calls, the way uvicorn hands them over (the path percent-decoded, `..` and
`//` left as sent): an HTTP client would tidy the path before sending it. A few of issue 18's paths are
also sent on the wire to a real uvicorn server.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from app.routes.playground import PAGE_DIR, page_files
from tests.app.live import asgi_request, serving
from tests.app.test_api_fake_engine import make_app

PAGE = {name: path.read_bytes() for name, path in page_files().items()}
ISSUE_18 = ["/playground/%00", "/playground/index.html%00.js", "/playground/..%00/main.py", "/playground/index.html/.."]
TRAVERSALS = ["/playground/../main.py", "/playground/..%2fmain.py", "/playground/%2e%2e/%2e%2e/app/main.py",
              "/playground/js/..%2F..%2F..%2Fpyproject.toml", "/playground/js/../../routes/playground.py",
              "/playground/%2fetc%2fpasswd", "/playground//etc/passwd", "/playground/..\\main.py",
              "/playground/js", "/playground/js/", "/playground/" + "a" * 5000,
              "/playground/" + "a/" * 3000, "/playground/%ff%fe", "/playground/index.html%20"]


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[Litestar, TestClient]]:
    application = make_app(api_keys=("sk-right",))  # the page's files need no key even so
    with TestClient(application) as client:
        yield application, client


def get(app: tuple[Litestar, TestClient], raw: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    application, client = app
    return client.blocking_portal.call(asgi_request, application, method, raw)


def check(status: int, headers: dict[str, str], body: bytes, method: str = "GET") -> None:
    assert status < 500, (status, body[:300])
    if status == 200:  # only ever one of the page's own files
        assert method == "HEAD" or body in PAGE.values(), body[:300]
    else:
        assert status == 404, (status, body[:300])
        if method == "GET":
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unknown_url"


def test_the_page_and_its_files_are_served(app: tuple[Litestar, TestClient]) -> None:
    assert {"index.html", "playground.css", "js/main.js", "js/api.js"} <= set(PAGE)
    for raw in ("/playground", "/playground/", "/playground/index.html"):
        status, headers, body = get(app, raw)
        assert status == 200 and body == PAGE["index.html"] and headers["content-type"].startswith("text/html")
        assert get(app, raw, "HEAD")[:3:2] == (200, b"")
    for name in PAGE:
        status, headers, body = get(app, f"/playground/{name}")
        assert status == 200 and body == PAGE[name], name
        status, headers, body = get(app, f"/playground/{name}", "HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == str(len(PAGE[name])), name


@pytest.mark.parametrize("raw", ISSUE_18 + TRAVERSALS)
def test_null_bytes_dot_segments_and_odd_names_are_404s(app: tuple[Litestar, TestClient], raw: str) -> None:
    status, headers, body = get(app, raw)
    check(status, headers, body)
    assert status == 404, raw


FRAGMENTS = ["..", ".", "", "%00", "\x00", "%2e%2e", "%2E.", "index.html", "js", "main.js", "api.js", "~", "\\",
             "..\\..", "%5c", "playground.css", "%ff", "%c0%ae%c0%ae", "etc", "passwd", "main.py", ";", "%25"]
SEPARATORS = ["/", "/", "//", "%2f", "%2F", "\\", "/./"]
printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#%"), max_size=12)
segments = st.one_of(st.sampled_from(FRAGMENTS), printable,
                     st.binary(max_size=6).map(lambda b: urllib.parse.quote(b, safe="")),
                     st.integers(200, 4000).map(lambda n: "n" * n))
raw_paths = st.lists(st.tuples(st.sampled_from(SEPARATORS), segments), max_size=8).map(
    lambda parts: "/playground" + "".join(sep + seg for sep, seg in parts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw_paths, st.sampled_from(["GET", "HEAD"]))
def test_any_path_is_a_page_file_or_a_404(app: tuple[Litestar, TestClient], raw: str, method: str) -> None:
    status, headers, body = get(app, raw, method)
    check(status, headers, body, method)


def test_the_listing_is_made_of_the_folder_only() -> None:
    for name, path in page_files().items():
        assert path.resolve().is_relative_to(PAGE_DIR.resolve()) and ".." not in name.split("/")


# -- the same paths on the wire, to a real uvicorn server ---------------------------------------------------


@pytest.fixture(scope="module")
def real_server() -> Iterator[int]:
    with serving(make_app()) as port:
        yield port


@pytest.mark.parametrize("raw", ISSUE_18 + ["/playground/" + "a" * 5000, "/playground/..%2f..%2fpyproject.toml"])
def test_issue_18_paths_on_a_real_server(real_server: int, raw: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", real_server, timeout=10)
    try:
        connection.request("GET", raw)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 404, (response.status, body[:300])
    check(response.status, {}, body)
