"""An operator's set-up through the real server and the official openai client: API keys, an admin key,
per-key rate limits and usage metering, JSON logs."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import start_server

MESSAGES = [{"role": "user", "content": "Name a colour."}]
KEYS = ("sk-limits-key-aaaa", "sk-limits-key-bbbb")
ADMIN = "adm-limits-secret-0001"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("limited"), "--model", "smollm2", "--quantize", "none",
                          "--api-key", KEYS[0], "--api-key", KEYS[1], "--admin-keys", ADMIN,
                          "--requests-per-minute", "3", "--log-format", "json")
    yield server
    server.stop()


def test_requests_per_minute_per_key_and_usage_for_admins(limited_server):
    base = f"{limited_server.base_url}/v1"
    first = openai.OpenAI(base_url=base, api_key=KEYS[0], max_retries=0, timeout=120)
    usages = [first.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6).usage
              for _ in range(3)]
    with pytest.raises(openai.RateLimitError) as err:
        first.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6)
    assert err.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    # the other key has its own window
    second = openai.OpenAI(base_url=base, api_key=KEYS[1], max_retries=0, timeout=120)
    stream = second.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True})
    streamed = [chunk.usage for chunk in stream if chunk.usage][0]

    denied = httpx.get(f"{base}/admin/usage", headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=30)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_key_required"
    report = httpx.get(f"{base}/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()
    rows = {row["key"]: row for row in report["data"]}
    a, b = rows["sk-...aaaa"], rows["sk-...bbbb"]
    assert a["requests"] == 3
    assert a["prompt_tokens"] == sum(u.prompt_tokens for u in usages)
    assert a["completion_tokens"] == sum(u.completion_tokens for u in usages)
    assert (b["requests"], b["completion_tokens"]) == (1, streamed.completion_tokens)


def test_json_logs_tag_every_request_with_the_id_it_was_given(limited_server):
    """Every line the server writes is a JSON object; a request's access line carries its X-Request-ID."""
    headers = {"Authorization": f"Bearer {KEYS[1]}"}
    chat = httpx.post(f"{limited_server.base_url}/v1/chat/completions", headers=headers, timeout=120,
                      json={"model": "smollm2", "messages": MESSAGES, "max_tokens": 4})
    refused = httpx.post(f"{limited_server.base_url}/v1/chat/completions", headers=headers, timeout=30,
                         json={"model": "smollm2", "messages": []})
    assert chat.status_code == 200 and refused.status_code == 400
    lines = [json.loads(line) for line in limited_server.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message", "request_id"} <= line.keys() for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "lodestar.access"}
    for response, status in ((chat, 200), (refused, 400)):
        line = access[response.headers["x-request-id"]]
        assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/chat/completions", status)
        assert line["duration_ms"] > 0
    assert chat.headers["x-request-id"] == chat.json()["id"]  # the completion id names the request
