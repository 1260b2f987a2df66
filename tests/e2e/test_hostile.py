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
