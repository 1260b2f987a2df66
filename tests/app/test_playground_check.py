"""POST /v1/playground/check: a chat body checked with the chat route's own rules, nothing generated."""

from __future__ import annotations

from litestar.testing import TestClient

from tests.app.test_api_fake_engine import assert_error, body, make_app
from tests.fakes import FakeEngine

CHECK = "/v1/playground/check"
BAD_SCHEMA = [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}]


def test_a_valid_body_passes_and_nothing_is_generated() -> None:
    engine = FakeEngine()
    with TestClient(make_app(engine)) as client:
        r = client.post(CHECK, json=body(max_tokens=5, response_format={"type": "json_object"}))
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "object": "chat.completion.check"}
    assert engine.requests == [] and len(engine.prepared) == 1  # the grammar was readied, nothing generated


def test_errors_are_the_chat_routes_own() -> None:
    with TestClient(make_app()) as client:
        # Reasoning fields too: both a level in 'reasoning' and a different 'reasoning_effort' is a 400.
        conflicting = body(reasoning={"effort": "high"}, reasoning_effort="low")
        for payload in (body(tools=BAD_SCHEMA), body(temperature=7), body(model="nope"), {"model": 1}, conflicting):
            checked, chat = client.post(CHECK, json=payload), client.post("/v1/chat/completions", json=payload)
            assert checked.status_code == chat.status_code >= 400
            assert checked.json()["error"] == chat.json()["error"]
        assert_error(client.post(CHECK, json=body(tools=BAD_SCHEMA)), 400,
                     param="tools[0].function.parameters.properties.a.type", code="invalid_tool_schema")
