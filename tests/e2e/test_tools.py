"""Function calling and structured output end to end: the official openai client, a real server, the
default model (Qwen2.5-Coder-0.5B), grammar-constrained decoding."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def dclient(default_server):
    return openai.OpenAI(base_url=f"{default_server.base_url}/v1", api_key="x", max_retries=0, timeout=300)


def ask(client, content, **kw):
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    return client.chat.completions.create(model="default", messages=messages, temperature=0,
                                          max_tokens=kw.pop("max_tokens", 80), **kw)


def assert_valid(call) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_required_gives_a_valid_call(dclient):
    reply = ask(dclient, "What's the weather in Paris?", tools=TOOLS, tool_choice="required",
                parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    assert_valid(choice.message.tool_calls[0])


def test_named_choice_calls_that_function(dclient):
    reply = ask(dclient, "What's the weather in Paris?", tools=TOOLS, parallel_tool_calls=False,
                tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    assert_valid(calls[0])


def test_auto_weather_question_yields_a_call(dclient):
    reply = ask(dclient, "Check the current weather in Tokyo for me.", tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    assert assert_valid(choice.message.tool_calls[0])["city"] == "Tokyo"


def test_auto_may_answer_in_text(dclient):
    # A question the weather tool has nothing to do with. ("Say hello to me." is borderline for the 0.5B
    # model: with a warm prefix cache it called get_weather for London.)
    for _ in range(2):  # cold, then from the prefix cache
        reply = ask(dclient, "What is 2 + 2? Answer in words.", tools=[WEATHER], max_tokens=20)
        choice = reply.choices[0]
        assert choice.message.content and not choice.message.tool_calls
        assert choice.finish_reason in ("stop", "length")
        assert "{" not in choice.message.content


def test_none_does_not_offer_tools(dclient):
    reply = ask(dclient, "Check the current weather in Tokyo for me.", tools=[WEATHER], tool_choice="none",
                max_tokens=30)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")
    without = ask(dclient, "Check the current weather in Tokyo for me.", max_tokens=30)
    assert reply.usage.prompt_tokens == without.usage.prompt_tokens  # the template saw no tools


def test_parallel_calls_are_all_valid(dclient):
    reply = ask(dclient, "What's the weather in Paris and in Rome?", tools=TOOLS, tool_choice="required",
                max_tokens=120)
    calls = reply.choices[0].message.tool_calls
    assert len(calls) >= 2
    for call in calls:
        assert_valid(call)
    assert len({(c.function.name, c.function.arguments) for c in calls}) == len(calls)  # no repeats


def test_agent_loop_with_a_tool_result(dclient):
    first = ask(dclient, "What's the weather in Paris?", tools=[WEATHER], tool_choice="required",
                parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})},
    ]
    # tool_choice "none" after a result: no tools in the prompt, and the answer opens like prose (told not
    # to call, the 0.5B model retyped its call as text). What the server owns is asserted here; whether
    # the greedy answer quotes the result depends, with int8, on what this shared server's prefix cache
    # holds (docs/parameters.md#seeds), so that is asserted by tests/clients on an unquantized server
    # (and measured by bench/agent_loop).
    answer = ask(dclient, messages, tools=[WEATHER], tool_choice="none", max_tokens=40)
    choice = answer.choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert not choice.message.content.startswith(("{", "`", "[", "(", " ")), choice.message.content  # prose
    assert '"name"' not in choice.message.content and "<tool_call>" not in choice.message.content


def test_streamed_calls_reassemble_to_the_same_calls(dclient):
    kwargs = {"tools": TOOLS, "tool_choice": "required", "max_tokens": 120}
    # Asked twice: the second answer and the stream both take the prompt from the prefix cache, so with
    # int8 they run the same numbers (a cold prompt computes slightly different ones; docs/sessions.md).
    ask(dclient, "What's the weather in Paris and in Rome?", **kwargs)
    whole = ask(dclient, "What's the weather in Paris and in Rome?", **kwargs).choices[0].message.tool_calls
    stream = dclient.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What's the weather in Paris and in Rome?"}],
        temperature=0, stream=True, **kwargs)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert entry["id"] is None  # the id comes once, on the call's first delta
                entry["id"] = delta.id
                entry["name"] = delta.function.name
            entry["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish in ("tool_calls", "length")  # this small model may keep calling until max_tokens
    assert [(c["name"], c["arguments"]) for c in calls.values()] == \
        [(c.function.name, c.function.arguments) for c in whole]
    for entry in calls.values():
        jsonschema.validate(json.loads(entry["arguments"]), SCHEMAS[entry["name"]])


def test_response_format_json_schema(dclient):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    reply = ask(dclient, "Give me a person named Ann aged 31.", max_tokens=60,
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert reply.choices[0].finish_reason == "stop"
    value = json.loads(reply.choices[0].message.content)
    jsonschema.validate(value, schema)


def test_response_format_json_object(dclient):
    reply = ask(dclient, "List two colours as JSON.", max_tokens=60, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


@pytest.mark.parametrize(("tools", "choice", "param", "code"), [
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "strin"}}}}}], None, "tools[0].function.parameters.properties.x.type", "invalid_tool_schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(["}}}}}], None, "tools[0].function.parameters.properties.x.pattern",
     "invalid_tool_schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "a(?=b)"}}}}}], None, "tools[0].function.parameters",
     "unsupported_schema"),  # a valid regex, but lookaround cannot be enforced by the grammar
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"$ref": "#/$defs/missing"}}}}}], None, "tools[0].function.parameters", "unsupported_schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None,
     "tools[0].function.parameters", "invalid_tool_schema"),
    ([WEATHER, WEATHER], None, "tools[1].function.name", "duplicate_tool_name"),
    ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools[0].function.name", "invalid_tool_name"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name", "unknown_tool"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"not": {"type": "string"}}}}}}], None, "tools[0].function.parameters.properties.x.not",
     "unsupported_schema"),
])
def test_invalid_tools_get_a_precise_400(dclient, tools, choice, param, code):
    kwargs = {"tools": tools} | ({"tool_choice": choice} if choice else {})
    with pytest.raises(openai.BadRequestError) as info:
        ask(dclient, "hi", **kwargs)
    error = info.value.response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error["message"]
