"""The JS SDK, auth, limits and start-up behaviour, each against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import ROOT, start_server

MESSAGES = [{"role": "user", "content": "Say hello."}]


def test_node_openai_sdk(small_server):
    out = subprocess.run(["node", str(ROOT / "tests/node/chat.mjs"), f"{small_server.base_url}/v1", "x"],
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["content"]
    assert result["finish"] in ("stop", "length")
    assert result["streamed"] == result["content"]  # greedy: same text streamed and not
    assert result["streamFinish"] == result["finish"]
    assert result["streamUsage"]["completion_tokens"] == result["usage"]["completion_tokens"]
    assert result["notFound"] == {"status": 404, "code": "model_not_found"}


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("guarded"), "--model", "smollm2",
                          "--api-key", "key-one", "--api-key", "key-two", "--max-body-bytes", "4096",
                          "--max-batch-size", "1", "--max-n", "1", "--max-queue", "1")
    yield server
    server.stop()


def test_api_keys(guarded_server):
    base = f"{guarded_server.base_url}/v1"
    for key in ("key-one", "key-two"):
        resp = openai.OpenAI(base_url=base, api_key=key).chat.completions.create(
            model="smollm2", messages=MESSAGES, max_tokens=2)
        assert resp.choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    assert err.value.body["code"] == "invalid_api_key"
    resp = httpx.get(f"{base}/models")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(f"{guarded_server.base_url}/health").status_code == 200  # public


def test_body_too_large(guarded_server):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * 10_000}]}
    resp = httpx.post(f"{guarded_server.base_url}/v1/chat/completions", json=body,
                      headers={"Authorization": "Bearer key-one"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_queue_full_gives_429(guarded_server):
    """One batch slot and one queue place: a third concurrent request is refused at once."""
    client = openai.OpenAI(base_url=f"{guarded_server.base_url}/v1", api_key="key-one", max_retries=0)
    streams = []
    try:
        for _ in range(2):  # one decoding, one waiting
            streams.append(client.chat.completions.create(
                model="smollm2", messages=MESSAGES, max_tokens=400, stream=True,
                extra_body={"ignore_eos": True}))
            if len(streams) == 1:
                # The role chunk leaves before the engine admits the request: wait for a token instead.
                next(chunk for chunk in streams[0] if chunk.choices and chunk.choices[0].delta.content)
        deadline = time.monotonic() + 10
        while httpx.get(f"{guarded_server.base_url}/ready").json()["engine"]["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2)
        assert err.value.body["code"] == "queue_full"
        assert err.value.response.headers["retry-after"] == "1"
    finally:
        for stream in streams:
            stream.close()


def test_malformed_json_and_types(small_server):
    url = f"{small_server.base_url}/v1/chat/completions"
    resp = httpx.post(url, content=b'{"model": "smollm2", "messages": [', headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = httpx.post(url, json={"model": "smollm2", "messages": MESSAGES, "n": "two"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "n"


def test_engine_not_ready_is_503(tmp_path):
    server = start_server(tmp_path, "--model", str(tmp_path / "missing.gguf"), wait_ready=False)
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="x", messages=MESSAGES)
        assert err.value.status_code == 503
        assert err.value.body["code"] == "engine_not_ready"
        assert httpx.get(f"{server.base_url}/ready").status_code == 503
    finally:
        server.stop()


def test_refuses_public_bind_without_keys():
    out = subprocess.run([sys.executable, "-m", "app", "serve", "--host", "0.0.0.0", "--port", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "without API keys" in out.stderr


def test_streams_keep_going_while_another_client_disconnects(small_server):
    """A disconnect ends only its own request."""
    client = openai.OpenAI(base_url=f"{small_server.base_url}/v1", api_key="x", max_retries=0)
    result: dict[str, str] = {}

    def survivor() -> None:
        result["text"] = client.chat.completions.create(
            model="smollm2", messages=MESSAGES, max_tokens=30, temperature=0).choices[0].message.content

    thread = threading.Thread(target=survivor)
    thread.start()
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=300, stream=True)
    next(iter(stream))
    stream.close()
    thread.join(timeout=120)
    assert result["text"]


@pytest.mark.parametrize("kind", ["gguf-file", "hf-folder"])
def test_model_from_a_path(tmp_path, kind):
    """--model takes a GGUF file or a Hugging Face folder as well as a catalog id."""
    from core.settings import Settings
    from engines.embedded.catalog import find_catalog_model
    from engines.embedded.loader import resolve_model_folder

    if kind == "gguf-file":
        path = find_catalog_model("smollm2").part_paths()[0]
    else:
        path, _, _ = resolve_model_folder("smollm2", Settings().data_path())
    server = start_server(tmp_path, "--model", str(path))
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        model_id = client.models.list().data[0].id
        resp = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=4)
        assert resp.model == model_id
        assert resp.usage.completion_tokens >= 1
    finally:
        server.stop()
