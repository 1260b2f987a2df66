"""LangChain's ChatOpenAI (langchain-openai) pointed at the server: invoke, streamed usage, tools, structured
output by both of its methods."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.clients.shared import CAPITAL, PERSON, WEATHER, Person, weather_report

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def llm(base_url):
    return ChatOpenAI(base_url=base_url, api_key="unused", model="default", temperature=0, max_tokens=60,
                      max_retries=0, timeout=300)


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return weather_report(city)


def test_invoke(llm):
    reply = llm.invoke(CAPITAL)
    assert "Paris" in reply.content
    assert reply.response_metadata["finish_reason"] == "stop"
    usage = reply.usage_metadata
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0


def test_max_tokens_arrives_as_max_completion_tokens(base_url):
    short = ChatOpenAI(base_url=base_url, api_key="unused", model="default", temperature=0, max_tokens=3,
                       max_retries=0, timeout=300)  # langchain-openai 1.x sends max_completion_tokens
    reply = short.invoke(CAPITAL)
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 3


def test_stream_usage_is_counted_once(llm, base_url):
    whole = llm.invoke(CAPITAL)
    streaming = ChatOpenAI(base_url=base_url, api_key="unused", model="default", temperature=0, max_tokens=60,
                           max_retries=0, timeout=300, stream_usage=True)
    merged = None
    for chunk in streaming.stream(CAPITAL):
        merged = chunk if merged is None else merged + chunk  # LangChain sums usage_metadata over chunks
    assert merged.content == whole.content
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert merged.usage_metadata[key] == whole.usage_metadata[key], key


def test_bind_tools(llm):
    reply = llm.bind_tools([get_weather]).invoke(WEATHER)
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    assert "17 degrees" in get_weather.invoke(call).content  # the args fit the tool's own schema


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(llm, method):
    person = llm.with_structured_output(Person, method=method).invoke(PERSON)
    assert person == Person(name="Ann", age=31)
