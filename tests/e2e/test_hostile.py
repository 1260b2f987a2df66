"""Hostile requests against the real server (issue 18): each gets a clean OpenAI-shaped 4xx, fast, and the
server keeps serving with its memory where it was."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServerProcess

PATHS = ["/v1/chat/completions", "/api/v3/inference/chat/completions", "/v1/playground/check"]
USER = [{"role": "user", "content": "Hi"}]


def all_of(n: int) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": {"type": "string", "allOf": [
        {"type": "string", "pattern": f".*{chr(0x61 + i) if i < 26 else chr(0x100 + i)}.*"} for i in range(n)]}}}


def tool(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": schema}}


def rss_kib(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])


def post(server: ServerProcess, path: str, body: bytes | dict[str, Any], timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.base_url + path, content=content, timeout=timeout,
                      headers={"Content-Type": "application/json"})


def openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where", ["tools", "response_format"])
def test_an_exponential_schema_is_refused_within_the_budget(small_server: ServerProcess, path: str,
                                                            where: str) -> None:
    before = rss_kib(small_server)
    schema = all_of(200)
    body: dict[str, Any] = {"model": "smollm2", "messages": USER, "max_tokens": 4}
    if where == "tools":
        body["tools"] = [tool(schema)]
    else:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    started = time.monotonic()
    error = openai_error(post(small_server, path, body), 400, "schema_too_complex")
    assert time.monotonic() - started < 5  # the default budget is 2 s
    assert error["param"].startswith(where)
    assert rss_kib(small_server) < before * 1.10


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [b"\xff\xfe\xfd", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_invalid_utf8_in_a_string_is_a_400(small_server: ServerProcess, path: str, bad: bytes) -> None:
    body = b'{"model": "smollm2", "messages": [{"role": "user", "content": "a' + bad + b'"}]}'
    assert "UTF-8" in openai_error(post(small_server, path, body), 400, "invalid_json")["message"]


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"type": "integer", "maximum": 10**30}}},
    {"type": "object", "properties": {"x": {"const": 2**64}}},
    {"type": "object", "properties": {"x": {"enum": [int("7" * 4000)]}}},
    {"type": "object", "properties": {"x": {"type": "integer", "default": 10**30}}},
])
def test_integers_beyond_64_bits_are_a_400(small_server: ServerProcess, schema: dict[str, Any]) -> None:
    for path in PATHS:
        body = {"model": "smollm2", "messages": USER, "tools": [tool(schema)], "max_tokens": 4}
        error = openai_error(post(small_server, path, body), 400, "unsupported_schema")
        assert "64 bits" in error["message"] and len(error["message"]) < 1000


def test_a_schema_without_a_finite_instance_is_refused_before_generation(small_server: ServerProcess) -> None:
    schema = {"$defs": {"a": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
              "$ref": "#/$defs/a"}
    body = {"model": "smollm2", "messages": USER, "max_tokens": 16,
            "response_format": {"type": "json_schema", "json_schema": {"name": "loop", "schema": schema}}}
    error = openai_error(post(small_server, PATHS[0], body), 400, "unsupported_schema")
    assert "no finite instance" in error["message"]


def test_too_many_optional_properties_are_refused_before_generation(small_server: ServerProcess) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(700)}}
    body = {"model": "smollm2", "messages": USER, "max_tokens": 16,
            "response_format": {"type": "json_schema", "json_schema": {"name": "wide", "schema": schema}}}
    response = post(small_server, PATHS[0], body)
    openai_error(response, 400, "schema_too_complex")
    assert len(response.content) < 2000


def test_the_server_serves_on_after_hostile_input(small_server: ServerProcess, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=USER, max_tokens=4)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=USER, max_tokens=4,  # type: ignore[arg-type]
                                       tools=[tool(all_of(60))])  # type: ignore[list-item]
    assert info.value.code == "schema_too_complex"


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server that lets llguidance's own row limit be reached (max_optional_properties above ~500), two keys
    and a batch of two, so that grammars failing mid-reply and fairness between keys can be seen."""
    from tests.conftest import start_server

    server = start_server(tmp_path_factory.mktemp("roomy"), "--model", "smollm2", "--max-optional-properties",
                          "1000", "--max-batch-size", "2", "--max-n", "2", "--api-key", "key-a", "--api-key",
                          "key-b", "--quantize", "none")
    yield server
    server.stop()


def keyed(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


WIDE = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(700)}}
WIDE_FORMAT = {"type": "json_schema", "json_schema": {"name": "wide", "schema": WIDE}}


def test_a_grammar_that_gives_up_mid_reply_is_an_error_not_a_stop(roomy_server: ServerProcess) -> None:
    client = keyed(roomy_server, "key-a")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=USER, max_tokens=16,  # type: ignore[arg-type]
                                       response_format=WIDE_FORMAT, temperature=0)  # type: ignore[arg-type]
    assert info.value.code == "schema_too_complex"
    # temperature 0: the same first token ("{"; a sampled "{}" would be a valid reply)
    stream = client.chat.completions.create(model="smollm2", messages=USER, max_tokens=16,  # type: ignore[arg-type]
                                            response_format=WIDE_FORMAT, stream=True,  # type: ignore[arg-type]
                                            temperature=0)
    with pytest.raises(openai.APIError) as streamed:
        for chunk in stream:
            assert not (chunk.choices and chunk.choices[0].finish_reason == "stop")
    assert "too complex" in str(streamed.value)
    assert len(roomy_server.log()) < 200_000  # no 67 KB grammar per failure in the log


def test_another_keys_request_does_not_wait_behind_one_keys_streams(roomy_server: ServerProcess) -> None:
    """Key A fills the batch (2) and queues four more long streams; key B's request is served before any of A's
    queued ones starts: it takes a slot from A at the next batch step instead of waiting first-in-first-out."""
    import threading

    first_token_at: dict[str, float] = {}
    done = threading.Event()

    def run(key: str, name: str, max_tokens: int) -> None:
        stream = keyed(roomy_server, key).chat.completions.create(
            model="smollm2", messages=USER, max_tokens=max_tokens, stream=True,  # type: ignore[arg-type]
            extra_body={"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and name not in first_token_at:
                first_token_at[name] = time.monotonic()
            if done.is_set() and name != "b":
                break  # closing the stream ends the request
        stream.close()

    hogs = [threading.Thread(target=run, args=("key-a", f"a{i}", 2000)) for i in range(6)]
    for i, thread in enumerate(hogs):
        thread.start()
        time.sleep(0.2 if i < 2 else 0.05)
    deadline = time.monotonic() + 30
    while len(first_token_at) < 2 and time.monotonic() < deadline:  # A holds both slots
        time.sleep(0.02)
    b = threading.Thread(target=run, args=("key-b", "b", 8))
    b.start()
    b.join(60)
    done.set()
    for thread in hogs:
        thread.join(60)
    assert "b" in first_token_at and not any(t.is_alive() for t in [b, *hogs])
    queued = [first_token_at.get(f"a{i}", float("inf")) for i in range(2, 6)]
    assert first_token_at["b"] < min(queued), first_token_at
