"""Lodestar's own OpenAPI document: it lists every route, and schemathesis fuzzes the app against it.

The fuzzing runs in process (ASGI) against the fake engine: the HTTP layer, validation and the chat
pipeline are real, generation is scripted. Image URLs in generated bodies can only name 127.0.0.1, and
private addresses are refused, so nothing is fetched from anywhere.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis import checks

from app.openapi import document
from core.config import build_settings
from core.settings import Settings
from tests.app.test_api_fake_engine import make_app

KEY = "sk-openapi"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 40  # per operation; each is a few milliseconds with the fake engine


def fuzzed_app(folder: Path) -> Litestar:
    return make_app(api_keys=(KEY,), sessions_path=str(folder / "sessions.sqlite3"), max_body_bytes=262_144,
                    image_allow_hosts=("127.0.0.1",), heap_trim_interval_s=0)


def test_the_document_lists_exactly_the_apps_routes(tmp_path: Path) -> None:
    app = fuzzed_app(tmp_path)
    routed = {(method.lower(), re.sub(r"\{([^}:]+)(:[^}]+)?\}", r"{\1}", route.path))
              for route in app.routes for method in route.methods - {"HEAD", "OPTIONS"}
              if not route.path.startswith("/playground")}  # the page's static files are not API operations
    with TestClient(app) as client:
        served = client.get("/openapi.json", headers=AUTH).json()
    documented = {(method, path) for path, ops in served["paths"].items() for method in ops}
    assert documented == routed
    assert served == document(app.state.settings, ["fake-model", "fake"])
    assert served["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"] == \
        ["fake-model", "fake"]


def test_logit_bias_is_described_though_it_is_decoded_from_raw_json() -> None:
    bias = document(Settings())["components"]["schemas"]["ChatCompletionRequest"]["properties"]["logit_bias"]
    obj, null = bias["anyOf"]
    assert obj["type"] == "object" and obj["additionalProperties"] == {"type": "number"}
    assert obj["propertyNames"] == {"pattern": "^[0-9]+$"} and null == {"type": "null"}


def test_security_is_described_only_when_keys_are_configured() -> None:
    open_doc, keyed_doc = document(Settings()), document(build_settings({"api_keys": ["sk-a"]}))
    chat_open, chat_keyed = open_doc["paths"]["/v1/chat/completions"]["post"], \
        keyed_doc["paths"]["/v1/chat/completions"]["post"]
    assert "security" not in chat_open and "401" not in chat_open["responses"]
    assert chat_keyed["security"] == [{"apiKey": []}] and "401" in chat_keyed["responses"]
    assert keyed_doc["paths"]["/health"]["get"]["security"] == []  # the probes stay public
    assert "403" in open_doc["paths"]["/v1/admin/usage"]["get"]["responses"]  # no admin keys: 403


# Loaded at import: schemathesis' fixture-based loading does not work with pytest 9.
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app(Path(tempfile.mkdtemp(prefix="lodestar-oa-"))),
                                        headers=AUTH)
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.negative_data_rejection]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: Any) -> None:
    """No 5xx; each status, media type and JSON body is one the document lists; invalid data gets a 4xx."""
    case.call_and_validate(headers=AUTH, checks=CHECKS)
