"""Schema checks: every problem is a 400 whose param points at the culprit, with a code a client can act on."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest

from chat.families import FAMILIES
from core.errors import APIError
from core.protocol import ChatCompletionRequest, request_decoder
from core.settings import ToolSettings
from tools.checker import GrammarChecker
from tools.request import ToolPlan
from tools.request import plan_tools as plan_with
from tools.schema import SchemaLimits, check_size, closed_objects
from tools.schema import check_schema as check_with

CHECKER = GrammarChecker()  # schema checks run in its child processes, as in the server


def check_schema(schema: Any, param: str, *, object_root: bool) -> str:
    return check_with(schema, param, object_root=object_root, checker=CHECKER, deadline=CHECKER.deadline())


def plan_tools(req: ChatCompletionRequest, settings: ToolSettings, renderer: Any, **kw: Any) -> ToolPlan:
    return plan_with(req, settings, renderer, CHECKER, **kw)

ROOT = "tools[0].function.parameters"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def refused(schema: Any, param: str = ROOT, *, object_root: bool = True) -> APIError:
    with pytest.raises(APIError) as info:
        check_schema(schema, param, object_root=object_root)
    error = info.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    return error


def prop(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool schema whose property `x` is `schema`."""
    return {"type": "object", "properties": {"x": schema}}


# -- the JSON Schema metaschema: invalid_tool_schema, the param points at the bad keyword -------------------

@pytest.mark.parametrize(("schema", "where", "words"), [
    (prop({"type": "strin"}), ".properties.x.type", "'strin'"),
    (prop({"type": ["string", "nul"]}), ".properties.x.type", "nul"),
    ({"type": "object", "properties": {"l": {"type": "array", "items": {"type": "integr"}}}},
     ".properties.l.items.type", "'integr'"),
    (prop({"anyOf": [{"type": "string"}, {"type": "strng"}]}), ".properties.x.anyOf[1].type", "'strng'"),
    (prop({"type": "string", "pattern": "[abc"}), ".properties.x.pattern", "regex"),
    (prop({"type": "string", "minLength": -1}), ".properties.x.minLength", "-1"),
    (prop({"type": "array", "maxItems": "3"}), ".properties.x.maxItems", "'3'"),
    ({"type": "object", "properties": {"x": {}}, "required": "x"}, ".required", "'x'"),
    ({"type": "object", "properties": [1]}, ".properties", "[1]"),
    (prop({"enum": "abc"}), ".properties.x.enum", "'abc'"),
])
def test_metaschema_errors_point_into_the_schema(schema: dict[str, Any], where: str, words: str) -> None:
    error = refused(schema)
    assert error.code == "invalid_tool_schema"
    assert error.param == ROOT + where
    assert error.message.startswith(f"'{ROOT + where}' is not a valid JSON Schema")
    assert words in error.message


@pytest.mark.parametrize("schema", [{"type": "array", "items": {"type": "string"}}, {"type": "string"},
                                    {"type": ["object", "null"]}, {"type": "integer"}])
def test_tool_parameters_must_be_an_object(schema: dict[str, Any]) -> None:
    error = refused(schema)
    assert (error.code, error.param) == ("invalid_tool_schema", ROOT)
    assert '"type": "object"' in error.message and repr(schema["type"]) in error.message


@pytest.mark.parametrize("schema", [[1], "object", 3, None])
def test_a_schema_must_be_a_json_object(schema: Any) -> None:
    error = refused(schema)
    assert (error.code, error.param) == ("invalid_tool_schema", ROOT)
    assert "must be a JSON Schema object" in error.message


def test_a_response_format_schema_may_have_any_root_type() -> None:
    param = "response_format.json_schema.schema"
    check_schema({"type": "array", "items": {"type": "integer"}}, param, object_root=False)
    check_schema({"type": "string", "maxLength": 3}, param, object_root=False)
    error = refused({"type": "strin"}, param, object_root=False)
    assert (error.code, error.param) == ("invalid_tool_schema", f"{param}.type")


def test_a_passing_schema_is_remembered_per_root_rule() -> None:
    """check_schema caches passes by JSON text: the cache must not let a string root pass as tool parameters."""
    schema = {"type": "string", "maxLength": 7}
    first = check_schema(schema, "response_format.json_schema.schema", object_root=False)
    assert check_schema(copy.deepcopy(schema), "response_format.json_schema.schema", object_root=False) == first
    assert refused(schema).code == "invalid_tool_schema"
    bad = prop({"type": "strin"})
    assert refused(bad).param == refused(copy.deepcopy(bad)).param == f"{ROOT}.properties.x.type"


# -- what llguidance cannot enforce: unsupported_schema, named --------------------------------------------

@pytest.mark.parametrize(("schema", "keyword", "where"), [
    (prop({"not": {"type": "string"}}), "not", ".properties.x.not"),
    (prop({"type": "array", "uniqueItems": True}), "uniqueItems", ".properties.x.uniqueItems"),
    (prop({"if": {"type": "string"}, "then": {"maxLength": 3}}), "if", ".properties.x.if"),
    (prop({"if": {"type": "string"}, "then": {"maxLength": 3}, "else": {"type": "integer"}}), "else",
     ".properties.x.else"),
    (prop({"type": "array", "contains": {"type": "integer"}}), "contains", ".properties.x.contains"),
    (prop({"type": "object", "propertyNames": {"pattern": "^a"}}), "propertyNames",
     ".properties.x.propertyNames"),
    ({"type": "object", "properties": {"a": {}}, "dependentSchemas": {"a": {"required": ["b"]}}},
     "dependentSchemas", ".dependentSchemas"),
    ({"type": "object", "properties": {"a": {}}, "dependentRequired": {"a": ["b"]}}, "dependentRequired",
     ".dependentRequired"),
    ({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": False}, "unevaluatedProperties",
     ".unevaluatedProperties"),
    ({"type": "object", "properties": {"deep": {"type": "array", "prefixItems": [{}, {"not": {}}]}}}, "not",
     ".properties.deep.prefixItems[1].not"),
])
def test_unsupported_keywords_are_named(schema: dict[str, Any], keyword: str, where: str) -> None:
    error = refused(schema)
    assert error.code == "unsupported_schema"
    assert f"the keyword '{keyword}' is not supported by constrained decoding" in error.message
    assert error.param == ROOT + where
    assert "docs/tools.md" in error.message


@pytest.mark.parametrize(("schema", "words"), [
    (prop({"type": "string", "pattern": "(?=a)b"}), "look-around"),
    (prop({"type": "string", "pattern": "(?<!a)b"}), "look-around"),
    (prop({"type": "string", "pattern": "(a)\\1"}), "backreferences"),
    (prop({"$ref": "#/$defs/nope"}), "/$defs/nope"),
    (prop({"$ref": "https://example.com/schema.json"}), "https://example.com/schema.json"),
    (prop({"type": "string", "format": "no-such-format"}), "no-such-format"),
    (prop({"oneOf": [{"type": "number"}, {"type": "integer"}]}), "oneOf"),
])
def test_what_the_grammar_cannot_enforce_is_refused(schema: dict[str, Any], words: str) -> None:
    error = refused(schema)
    assert error.code == "unsupported_schema"
    assert error.param is not None and error.param.startswith(ROOT)
    assert error.message.startswith(f"'{error.param}' cannot be enforced: ")
    assert words in error.message
    assert "\n" not in error.message  # llguidance's multi-line regex errors are flattened


SUPPORTED = {
    "type list": {"type": ["string", "null"]},
    "enum": {"enum": ["a", 1, None]},
    "const": {"const": "a"},
    "anyOf": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    "oneOf (disjoint)": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "allOf": {"allOf": [{"type": "string"}, {"maxLength": 3}]},
    "$ref/$defs": {"$ref": "#/$defs/a"},
    "$ref/definitions": {"$ref": "#/definitions/a"},
    "recursive $ref": {"$ref": "#"},
    "min/maxLength": {"type": "string", "minLength": 1, "maxLength": 3},
    "pattern": {"type": "string", "pattern": "^[a-z]+\\d{2}$"},
    "format date-time": {"type": "string", "format": "date-time"},
    "format date": {"type": "string", "format": "date"},
    "format time": {"type": "string", "format": "time"},
    "format duration": {"type": "string", "format": "duration"},
    "format email": {"type": "string", "format": "email"},
    "format hostname": {"type": "string", "format": "hostname"},
    "format ipv4": {"type": "string", "format": "ipv4"},
    "format ipv6": {"type": "string", "format": "ipv6"},
    "format uri": {"type": "string", "format": "uri"},
    "format uuid": {"type": "string", "format": "uuid"},
    "minimum/maximum": {"type": "integer", "minimum": 1, "maximum": 5},
    "exclusive bounds": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5},
    "multipleOf": {"type": "number", "multipleOf": 0.5},
    "items": {"type": "array", "items": {"type": "integer"}},
    "prefixItems": {"type": "array", "prefixItems": [{"type": "integer"}], "items": False},
    "min/maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    "min/maxProperties": {"type": "object", "minProperties": 1, "maxProperties": 2},
    "patternProperties": {"type": "object", "patternProperties": {"^a": {"type": "integer"}}},
    "additionalProperties schema": {"type": "object", "additionalProperties": {"type": "integer"}},
    "annotations": {"type": "string", "title": "t", "description": "d", "default": "a", "examples": ["a"],
                    "deprecated": True, "readOnly": True, "$comment": "c"},
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_the_documented_subset_passes(name: str) -> None:
    schema = {**prop(SUPPORTED[name]), "$defs": {"a": {"type": "integer"}}, "definitions": {"a": {"type": "integer"}}}
    grammar = check_schema(schema, ROOT, object_root=True)
    assert isinstance(grammar, str) and grammar


# -- bounds: schema_too_large --------------------------------------------------------------------------------

def nested(levels: int) -> dict[str, Any]:
    """An object schema whose JSON nests `levels` dicts deep (each array level adds one)."""
    inner: dict[str, Any] = {"type": "integer"}
    for _ in range(levels - 3):
        inner = {"type": "array", "items": inner}
    return {"type": "object", "properties": {"x": inner}}


def test_depth_limit() -> None:
    limits = SchemaLimits(max_bytes=1 << 20, max_depth=32)
    check_size([(ROOT, nested(32))], limits)
    with pytest.raises(APIError) as info:
        check_size([("tools[0].function.parameters", WEATHER), ("tools[1].function.parameters", nested(33))],
                   limits)
    assert (info.value.code, info.value.param) == ("schema_too_large", "tools[1].function.parameters")
    assert "deeper than 32 levels" in info.value.message


def test_size_limit_counts_all_schemas_of_a_request() -> None:
    big = {"type": "object", "description": "x" * 600}
    size = len(msgspec.json.encode(big))
    limits = SchemaLimits(max_bytes=2 * size + 10, max_depth=32)
    check_size([("tools[0].function.parameters", big), ("tools[1].function.parameters", big)], limits)
    with pytest.raises(APIError) as info:
        check_size([(f"tools[{i}].function.parameters", big) for i in range(3)], limits)
    assert (info.value.code, info.value.param) == ("schema_too_large", "tools[2].function.parameters")
    assert str(2 * size + 10) in info.value.message


def test_the_deepest_schema_a_request_can_carry_is_refused(renderer: Any) -> None:
    """msgspec decodes JSON up to ~1000 levels; such a schema is a 400 before metaschema or grammar work."""
    body = (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
            b'"function": {"name": "a", "parameters": {"type": "object", "properties": {"x": '
            + b'{"items": ' * 900 + b'{}' + b'}' * 900 + b'}}}}]}')
    with pytest.raises(APIError) as info:
        plan_tools(request_decoder.decode(body), ToolSettings(), renderer)
    assert (info.value.code, info.value.param) == ("schema_too_large", "tools[0].function.parameters")


# -- closed_objects ---------------------------------------------------------------------------------------

def test_closed_objects_closes_every_object_with_properties() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
        "l": {"type": "array", "items": {"type": "object", "properties": {"c": {}}}},
        "u": {"anyOf": [{"type": "object", "properties": {"d": {}}}, {"type": "null"}]},
        "r": {"$ref": "#/$defs/thing"}},
        "$defs": {"thing": {"type": "object", "properties": {"e": {}}}}}
    original = copy.deepcopy(schema)
    closed = closed_objects(schema)
    assert schema == original  # not modified in place
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["l"]["items"]["additionalProperties"] is False
    assert closed["properties"]["u"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["u"]["anyOf"][1]
    assert closed["$defs"]["thing"]["additionalProperties"] is False


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
    {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}},
    {"type": "object"},
    {"type": "object", "additionalProperties": {"type": "string"}},
])
def test_closed_objects_respects_what_the_schema_says(schema: dict[str, Any]) -> None:
    assert closed_objects(schema) == schema


def test_closed_objects_leaves_allof_schemas_alone() -> None:
    schema = {"allOf": [{"type": "object", "properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert closed_objects(schema) == schema
    assert closed_objects({"type": "object", "properties": {"x": schema}}) == {
        "type": "object", "properties": {"x": schema}}


# -- through plan_tools ------------------------------------------------------------------------------------

def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return request_decoder.decode(json.dumps(body).encode())


def tool(name: str, parameters: Any = None, description: str | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    if description is not None:
        function["description"] = description
    return {"type": "function", "function": function}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def plan_error(renderer: Any, settings: ToolSettings | None = None, **fields: Any) -> APIError:
    with pytest.raises(APIError) as info:
        plan_tools(request(**fields), settings or ToolSettings(), renderer)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(("fields", "code", "param", "words"), [
    ({"tools": [tool("a", WEATHER), tool("a", WEATHER)]}, "duplicate_tool_name", "tools[1].function.name",
     "'a' is used by more than one tool"),
    ({"tools": [tool("get weather", WEATHER)]}, "invalid_tool_name", "tools[0].function.name", "'get weather'"),
    ({"tools": [tool("ok"), tool("a.b")]}, "invalid_tool_name", "tools[1].function.name", "'a.b'"),
    ({"tools": [tool("")]}, "invalid_tool_name", "tools[0].function.name", "{1,64}"),
    ({"tools": [tool("a" * 65)]}, "invalid_tool_name", "tools[0].function.name", "{1,64}"),
    ({"tools": [tool("é")]}, "invalid_tool_name", "tools[0].function.name", "'é'"),
    ({"tools": [tool("a", WEATHER)], "tool_choice": named("b")}, "unknown_tool", "tool_choice.function.name",
     "'b'"),
    ({"tool_choice": "required"}, "invalid_value", "tool_choice", "requires 'tools'"),
    ({"tool_choice": named("a")}, "invalid_value", "tool_choice", "requires 'tools'"),
    ({"tools": [], "tool_choice": "required"}, "invalid_value", "tool_choice", "requires 'tools'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "invalid_value",
     "response_format.json_schema.schema", "is required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "invalid_tool_schema", "response_format.json_schema.schema.type", "'strin'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
     "unsupported_schema", "response_format.json_schema.schema.not", "'not'"),
    ({"tools": [tool("a", WEATHER), tool("b", prop({"type": "strin"}))]}, "invalid_tool_schema",
     "tools[1].function.parameters.properties.x.type", "'strin'"),
    ({"tools": [tool("a", {"type": "array"})]}, "invalid_tool_schema", "tools[0].function.parameters",
     '"type": "object"'),
    ({"tools": [tool("a", nested(40))]}, "schema_too_large", "tools[0].function.parameters", "deeper than 32"),
    ({"tools": [tool("a", {"type": "object", "description": "x" * 70_000})]}, "schema_too_large",
     "tools[0].function.parameters", "65536 bytes"),
])
def test_plan_tools_refusals(renderer: Any, fields: dict[str, Any], code: str, param: str, words: str) -> None:
    error = plan_error(renderer, **fields)
    assert (error.code, error.param) == (code, param), error.message
    assert words in error.message


def test_too_many_tools(renderer: Any) -> None:
    settings = ToolSettings(max_tools=2)
    plan_tools(request(tools=[tool("a"), tool("b")]), settings, renderer)
    error = plan_error(renderer, settings, tools=[tool("a"), tool("b"), tool("c")])
    assert (error.code, error.param) == ("too_many_tools", "tools")
    assert "3 entries; the limit is 2" in error.message


def test_schema_limits_come_from_settings(renderer: Any) -> None:
    settings = ToolSettings(max_schema_depth=4, max_schema_bytes=200)
    assert plan_error(renderer, settings, tools=[tool("a", nested(5))]).code == "schema_too_large"
    plan_tools(request(tools=[tool("a", nested(4))]), settings, renderer)
    big = {"type": "object", "description": "x" * 150}
    assert plan_error(renderer, settings, tools=[tool("a", big), tool("b", big)]).param == \
        "tools[1].function.parameters"


def test_a_family_without_tool_markers_refuses_tools(renderer: Any) -> None:
    chatml = type(renderer)(family=FAMILIES["chatml"], tokenizer=renderer.tokenizer)
    for choice in (None, "auto", "required", named("a")):
        fields: dict[str, Any] = {"tools": [tool("a", WEATHER)]}
        if choice is not None:
            fields["tool_choice"] = choice
        error = plan_error(chatml, **fields)
        assert (error.code, error.param) == ("tools_not_supported", "tools")
        assert "chatml" in error.message
    # Tools that are not offered, and JSON output, need no markers.
    plan = plan_tools(request(tools=[tool("a", WEATHER)], tool_choice="none"), ToolSettings(), chatml)
    assert plan.constraint is None and plan.markers is None
    plan = plan_tools(request(response_format={"type": "json_object"}), ToolSettings(), chatml)
    assert plan.constraint is not None and plan.parser() is None


# -- plans that pass ---------------------------------------------------------------------------------------

def test_auto_plan(renderer: Any) -> None:
    plan = plan_tools(request(tools=[tool("get_weather", WEATHER, "Weather now"), tool("ping")]), ToolSettings(),
                      renderer)
    assert plan.markers == ("<tool_call>", "</tool_call>")
    assert plan.bare_calls is True
    assert plan.constraint is not None and plan.constraint.grammar.startswith("start: TEXT | bare | TEXT? calls")
    assert plan.template_tools == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                          "parameters": WEATHER}},
        {"type": "function", "function": {"name": "ping", "description": "",
                                          "parameters": {"type": "object", "properties": {}}}}]
    parser = plan.parser()
    assert parser is not None and parser.bare and set(parser.schemas) == {"get_weather", "ping"}


def test_a_reply_to_tool_results_calls_only_with_markers(renderer: Any) -> None:
    """After a tool result the default model retypes its call as bare JSON instead of answering (issue 19)."""
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "21 degrees"}]
    tools = [tool("get_weather", WEATHER)]
    plan = plan_tools(request(tools=tools, messages=messages), ToolSettings(), renderer)
    assert plan.constraint is not None and plan.constraint.grammar.startswith("start: TEXT | TEXT? calls")
    parser = plan.parser()
    assert plan.bare_calls is False and parser is not None and not parser.bare
    # A question after the result is a new turn: bare calls are read again; the setting keeps them always.
    asked = plan_tools(request(tools=tools, messages=[*messages, {"role": "user", "content": "And Rome?"}]),
                       ToolSettings(), renderer)
    assert asked.bare_calls is True
    kept = plan_tools(request(tools=tools, messages=messages),
                      ToolSettings(bare_calls_after_tool_results=True), renderer)
    assert kept.bare_calls is True and kept.constraint is not None
    assert kept.constraint.grammar.startswith("start: TEXT | bare | TEXT? calls")
    # tool_choice "none" after the result: no tools shown, and the answer opens like prose.
    none = plan_tools(request(tools=tools, messages=messages, tool_choice="none"), ToolSettings(), renderer)
    assert none.template_tools is None and none.constraint is not None
    assert none.constraint.grammar.startswith("start: TEXT\n") and none.parser() is None


def test_a_model_that_answers_better_without_tools_gets_none_after_results(renderer: Any) -> None:
    """The default 0.5B model answers a tool result from it only when its prompt leaves the tools out
    (bench/agent_loop: 9 -> 14 of 36); the grammar still takes calls made with the markers."""
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "21 degrees"}]
    tools = [tool("get_weather", WEATHER)]

    def plan(msgs: list[dict[str, Any]], setting: str = "model", hides: bool = True) -> ToolPlan:
        settings = ToolSettings(tools_after_tool_results=setting)
        return plan_tools(request(tools=tools, messages=msgs), settings, renderer, model_hides_tools=hides)

    hidden = plan(messages)
    assert hidden.template_tools is None and hidden.markers is not None
    assert hidden.constraint is not None and "calls" in hidden.constraint.grammar
    assert plan(messages[:1]).template_tools is not None  # the first turn shows them
    assert plan(messages, hides=False).template_tools is not None  # other models see them again
    assert plan(messages, "show").template_tools is not None
    assert plan(messages, "hide", hides=False).template_tools is None


def test_none_plan_shows_no_tools(renderer: Any) -> None:
    plan = plan_tools(request(tools=[tool("a", WEATHER)], tool_choice="none"), ToolSettings(), renderer)
    assert plan == ToolPlan(schemas={"a": WEATHER})
    assert plan.parser() is None


@pytest.mark.parametrize("parallel", [None, True, False])
def test_required_and_named_plans(renderer: Any, parallel: bool | None) -> None:
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    tools = [tool("a", WEATHER), tool("b")]
    required = plan_tools(request(tools=tools, tool_choice="required", **extra), ToolSettings(), renderer)
    assert required.constraint is not None and required.constraint.grammar.startswith("start: calls")
    assert ('("\\n" call)*' in required.constraint.grammar) is (parallel is not False)
    assert required.bare_calls is False
    only_b = plan_tools(request(tools=tools, tool_choice=named("b"), **extra), ToolSettings(), renderer)
    assert only_b.constraint is not None
    assert '\\"name\\": \\"b\\"' in only_b.constraint.grammar
    assert '\\"name\\": \\"a\\"' not in only_b.constraint.grammar
    assert only_b.template_tools is not None and len(only_b.template_tools) == 2  # the model still sees both


def test_response_format_plans(renderer: Any) -> None:
    plan = plan_tools(request(response_format={"type": "json_object"}), ToolSettings(), renderer)
    assert plan.constraint is not None and plan.constraint.grammar.startswith('start: %json {"type": "object"')
    assert plan.parser() is None
    text = plan_tools(request(response_format={"type": "text"}), ToolSettings(), renderer)
    assert text.constraint is None
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    both = plan_tools(request(tools=[tool("a", WEATHER)], response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}), ToolSettings(), renderer)
    assert both.constraint is not None and both.constraint.grammar.startswith("start: json_answer | calls")
    assert both.bare_calls is False and both.markers == ("<tool_call>", "</tool_call>")
    required = plan_tools(request(tools=[tool("a", WEATHER)], tool_choice="required", response_format={
        "type": "json_object"}), ToolSettings(), renderer)
    assert required.constraint is not None and required.constraint.grammar.startswith("start: calls")


def test_equal_requests_give_equal_constraint_keys(renderer: Any) -> None:
    fields = {"tools": [tool("a", WEATHER)], "tool_choice": "required"}
    first = plan_tools(request(**fields), ToolSettings(), renderer).constraint
    second = plan_tools(request(**fields), ToolSettings(), renderer).constraint
    other = plan_tools(request(**{**fields, "parallel_tool_calls": False}), ToolSettings(), renderer).constraint
    assert first is not None and second is not None and other is not None
    assert first.key == second.key != other.key
    assert len(first.key) == 64
