"""Log lines carry their request's id (the X-Request-ID the client gets), as text or as JSON objects."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from litestar.testing import TestClient

from app import logs
from tests.app.test_api_fake_engine import CHAT, body, make_app


@pytest.fixture(autouse=True)
def record_factory() -> None:
    logs._install_record_factory()  # what `python -m app serve` does at start-up


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_lines_carry_the_request_id_of_the_response() -> None:
    kept, logger = Kept(), logs.access_log  # Litestar's logging set-up replaces the root handlers: no caplog
    logger.addHandler(kept)
    logger.setLevel(logging.INFO)
    try:
        with TestClient(make_app(heap_trim_interval_s=0)) as client:
            ok = client.post(CHAT, json=body())
            streamed = client.post(CHAT, json=body(stream=True))
            refused = client.post(CHAT, json=body(n=0))
            models = client.get("/v1/models")
    finally:
        logger.removeHandler(kept)
    access = {r.request_id: r for r in kept.records}
    for response, path in ((ok, CHAT), (streamed, CHAT), (refused, CHAT), (models, "/v1/models")):
        record = access[response.headers["x-request-id"]]
        assert record.fields["path"] == path and record.fields["status"] == response.status_code
    assert ok.headers["x-request-id"] == ok.json()["id"]
    assert logs.REQUEST_ID.get() == "-"  # nothing leaks out of a request


def test_json_lines_hold_the_message_the_id_the_fields_and_the_exception() -> None:
    formatter = logs.JSONFormatter()
    token = logs.REQUEST_ID.set("req-123")
    try:
        try:
            raise ValueError("broken")
        except ValueError:
            record = logging.getLogger("lodestar.test").makeRecord(
                "lodestar.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info(),
                extra={"fields": {"status": 500}})
    finally:
        logs.REQUEST_ID.reset(token)
    line = json.loads(formatter.format(record))
    assert line["message"] == "failed here" and line["level"] == "error" and line["logger"] == "lodestar.test"
    assert line["request_id"] == "req-123" and line["status"] == 500
    assert "ValueError: broken" in line["exception"]
    assert line["time"].endswith("Z")
