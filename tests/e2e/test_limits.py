"""Per-key rate limits and usage metering through the real server, with the official openai client."""

from __future__ import annotations

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
                          "--requests-per-minute", "3")
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
