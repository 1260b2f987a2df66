"""Hardening of the HTTP surface with a fake engine: every route behind the key, request bounds."""

from __future__ import annotations

import re

import pytest
from litestar.testing import TestClient

from tests.app.test_api_fake_engine import CHAT, assert_error, body, make_app

PUBLIC = {"/health", "/ready", "/playground", "/playground/{file_path:path}"}  # the page's files hold no data
ADMIN = {"/v1/admin/usage"}


def test_every_route_but_health_and_ready_requires_the_key() -> None:
    """Walks the app's own route table, so a route added later cannot slip through unprotected."""
    app = make_app(api_keys=("sk-right",), admin_keys=("adm-right",))
    checked = set()
    with TestClient(app) as c:
        for route in app.routes:
            some = "index.html" if route.path.startswith("/playground") else "some-id"  # a file that exists
            path = re.sub(r"\{[^}:]+(:[^}]+)?\}", some, route.path)
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                r = c.request(method, path, json=body())
                if route.path in PUBLIC:
                    assert r.status_code == 200, (method, path, r.text)
                else:
                    assert_error(r, 401, code="missing_api_key")
                    bad = c.request(method, path, json=body(), headers={"Authorization": "Bearer sk-wrong"})
                    assert_error(bad, 401, code="invalid_api_key")
                if route.path in ADMIN:  # an API key does not open admin routes
                    r = c.request(method, path, headers={"Authorization": "Bearer sk-right"})
                    assert_error(r, 403, code="admin_key_required")
                checked.add((method, route.path))
    # the walk really covered the API: chat (both paths), models, sessions, the public probes
    assert {("POST", CHAT), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"),
            ("GET", "/v1/admin/usage")} <= checked
    assert any(p.startswith("/v1/sessions/") and m == "DELETE" for m, p in checked)


@pytest.mark.parametrize(("content", "code"), [
    ([{"type": "text", "text": "a"}] * 5, "too_many_content_parts"),
    ("x" * 101, "message_too_long"),
    ([{"type": "text", "text": "x" * 60}, {"type": "text", "text": "y" * 41}], "message_too_long"),
])
def test_message_bounds_are_named_400s(content: object, code: str) -> None:
    with TestClient(make_app(max_content_parts=4, max_message_chars=100)) as c:
        r = c.post(CHAT, json=body(messages=[{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": content}]))
        error = assert_error(r, 400, param="messages[1].content", code=code)
        assert "limit" in error["message"]
        # at the bound itself the request is served
        ok = [{"type": "text", "text": "a"}] * 4 if code == "too_many_content_parts" else "x" * 100
        assert c.post(CHAT, json=body(messages=[{"role": "user", "content": ok}])).status_code == 200
