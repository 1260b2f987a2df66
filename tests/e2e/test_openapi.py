"""The real server's OpenAPI document describes what the official openai client sends and gets back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI
from referencing import Registry
from referencing.jsonschema import DRAFT202012

WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of one component schema, its $refs resolved within the document."""
    registry = Registry().with_resource("urn:lodestar", DRAFT202012.create_resource(document))
    return jsonschema.Draft202012Validator({"$ref": f"urn:lodestar#/components/schemas/{name}"},
                                           registry=registry)


def test_the_sdks_requests_and_the_servers_answers_match_the_document(small_server) -> None:
    document = httpx.get(f"{small_server.base_url}/openapi.json", timeout=30).json()
    model_enum = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"]
    assert "smollm2" in model_enum and "smollm2-135m-instruct" in model_enum

    sent: list[dict[str, Any]] = []
    answers: list[tuple[int, dict[str, Any]]] = []

    def keep_request(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    def keep_response(response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            answers.append((response.status_code, response.json()))

    http = httpx.Client(event_hooks={"request": [keep_request], "response": [keep_response]}, timeout=120)
    client = OpenAI(base_url=f"{small_server.base_url}/v1", api_key="unused", max_retries=0, http_client=http)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6, temperature=0.5, seed=1,
                                   n=2, logprobs=True, top_logprobs=2, stop=["\n\n"])
    with pytest.raises(openai.BadRequestError):  # SmolLM2's template has no tool-call format: a 400
        client.chat.completions.create(model="smollm2", messages=messages, max_tokens=30, tools=[WEATHER],
                                       tool_choice="required")
    list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=4, stream=True,
                                        stream_options={"include_usage": True}))
    client.chat.completions.create(model="smollm2", messages=messages, max_tokens=4,
                                   response_format={"type": "json_object"})

    request_schema = validator(document, "ChatCompletionRequest")
    assert len(sent) == 4 and [status for status, _ in answers] == [200, 400, 200]  # the stream is SSE
    for body in sent:
        request_schema.validate(body)
    for status, answer in answers:
        validator(document, "ChatCompletion" if status == 200 else "ErrorResponse").validate(answer)
        assert str(status) in document["paths"]["/v1/chat/completions"]["post"]["responses"]
