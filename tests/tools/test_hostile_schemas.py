"""Hostile schemas (issue 18): every one is a 400 naming the problem, found within the budget, and the server's
own process never pays for it (the check runs in a child process with a time and memory budget)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import APIError
from tools.checker import Deadline, GrammarBudget, GrammarChecker
from tools.schema import SchemaLimits, check_schema, check_size

ROOT = "tools[0].function.parameters"
CHECKER = GrammarChecker(GrammarBudget(time_s=1.0, memory_bytes=256 << 20, workers=1))


def all_of(n: int, salt: int = 0) -> dict[str, Any]:
    """A string that must contain n different characters: 2^n states for llguidance's regex check."""
    chars = [chr(0x100 + salt * 1000 + i) for i in range(n)]
    return {"type": "object", "properties": {"a": {"type": "string", "allOf": [
        {"type": "string", "pattern": f".*{c}.*"} for c in chars]}}}


def refused(schema: Any, checker: GrammarChecker = CHECKER, **deadline: Any) -> APIError:
    with pytest.raises(APIError) as info:
        check_schema(schema, ROOT, object_root=True, checker=checker, deadline=checker.deadline(**deadline))
    assert info.value.status == 400
    return info.value


def rss_kib() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


@pytest.mark.parametrize("n", [10, 16, 20, 40, 200])
def test_the_all_of_family_is_refused_within_the_budget(n: int) -> None:
    before = rss_kib()
    started = time.monotonic()
    error = refused(all_of(n, salt=n))
    assert time.monotonic() - started < CHECKER.budget.time_s + 1.0
    assert error.code == "schema_too_complex" and error.param == ROOT
    assert rss_kib() - before < 20_000  # the work happened elsewhere


def test_a_refusal_is_remembered() -> None:
    refused(all_of(30, salt=7))
    started = time.monotonic()
    assert refused(all_of(30, salt=7)).code == "schema_too_complex"
    assert time.monotonic() - started < 0.2


def test_the_memory_cap_ends_the_check() -> None:
    roomy = GrammarChecker(GrammarBudget(time_s=60.0, memory_bytes=128 << 20, workers=1))
    started = time.monotonic()
    error = refused(all_of(24, salt=24), roomy)
    assert time.monotonic() - started < 30
    assert "MiB" in error.message or "too complex" in error.message
    roomy.close()


def test_a_client_that_leaves_stops_the_check() -> None:
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    slow = GrammarChecker(GrammarBudget(time_s=60.0, memory_bytes=1 << 30, workers=1))
    started = time.monotonic()
    with pytest.raises(APIError):
        check_schema(all_of(40, salt=40), ROOT, object_root=True, checker=slow, deadline=slow.deadline(cancelled))
    assert time.monotonic() - started < 2
    # not remembered: the schema was not judged
    assert check_schema({"type": "object"}, ROOT, object_root=True, checker=slow, deadline=slow.deadline())
    slow.close()


def test_busy_checkers_answer_503_not_a_wrong_verdict() -> None:
    one = GrammarChecker(GrammarBudget(time_s=1.0, memory_bytes=1 << 30, workers=1))
    results: list[Any] = []

    def hostile() -> None:
        try:
            check_schema(all_of(40, salt=41), ROOT, object_root=True, checker=one, deadline=one.deadline())
        except APIError as exc:
            results.append(exc)

    thread = threading.Thread(target=hostile)
    thread.start()
    time.sleep(0.1)
    with pytest.raises(APIError) as info:
        check_schema({"type": "object", "properties": {"z": {"type": "integer"}}}, ROOT, object_root=True,
                     checker=one, deadline=Deadline(0.3))  # spent while the only checker is busy
    thread.join()
    assert (info.value.status, info.value.code) == (503, "server_busy")
    assert results[0].code == "schema_too_complex"
    one.close()


HUGE = st.one_of(st.integers(min_value=1 << 63), st.integers(max_value=-(1 << 63) - 1))
KEYWORD = st.sampled_from(["maximum", "minimum", "const", "default", "multipleOf", "exclusiveMaximum"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HUGE, keyword=KEYWORD)
def test_integers_beyond_64_bits_are_refused_by_path(value: int, keyword: str) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer", keyword: abs(value) if
                                                    keyword == "multipleOf" else value}}}
    error = refused(schema)
    assert error.code in ("unsupported_schema", "invalid_tool_schema")
    if error.code == "unsupported_schema":
        assert error.param == f"{ROOT}.properties.x.{keyword}"


def test_a_4000_digit_enum_value_is_refused() -> None:
    error = refused({"type": "object", "properties": {"x": {"enum": [int("9" * 4000)]}}})
    assert (error.code, error.param) == ("unsupported_schema", f"{ROOT}.properties.x.enum[0]")


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
    {"$defs": {"a": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
     "$ref": "#/$defs/a"},
    {"type": "object", "properties": {"l": {"$ref": "#/$defs/l"}}, "required": ["l"],
     "$defs": {"l": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/l"}}}},
    {"type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"], "$defs": {
        "p": {"type": "object", "properties": {"q": {"$ref": "#/$defs/q"}}, "required": ["q"]},
        "q": {"anyOf": [{"$ref": "#/$defs/p"}, {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/p"}}]}}},
])
def test_schemas_without_a_finite_instance_are_refused(schema: dict[str, Any]) -> None:
    error = refused(schema)
    assert error.code == "unsupported_schema" and "no finite instance" in error.message


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"$ref": "#"}}},  # optional: {} ends it
    {"type": "object", "properties": {"t": {"$ref": "#/$defs/t"}}, "$defs": {"t": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}}, "required": ["kids"]}}},  # [] ends it
    {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}, "required": ["n"], "$defs": {"n": {"anyOf": [
        {"type": "null"}, {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}, "required": ["n"]}]}}},
])
def test_recursive_schemas_with_finite_instances_pass(schema: dict[str, Any]) -> None:
    assert check_schema(schema, ROOT, object_root=True, checker=CHECKER, deadline=CHECKER.deadline())


def test_too_many_optional_properties_are_refused_up_front() -> None:
    many = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(700)}}
    limits = SchemaLimits(max_bytes=1 << 20, max_depth=32, max_optional_properties=256)
    with pytest.raises(APIError) as info:
        check_size([(ROOT, many)], limits)
    assert (info.value.code, info.value.param) == ("schema_too_complex", ROOT)
    required = {**many, "required": [f"p{i}" for i in range(500)]}
    check_size([(ROOT, required)], limits)  # 200 optional ones are fine


def test_the_whole_grammar_is_checked_once_too() -> None:
    """plan_tools checks each schema, then the grammar the engine will compile (all of them together), so that
    what the server compiles in its own process has passed within the budget; known verdicts are reused."""
    from chat.families import FAMILIES
    from core.protocol import request_decoder
    from core.settings import ToolSettings
    from tools.request import plan_tools

    class Renderer:
        family = FAMILIES["generic"]
        tokenizer = None

    checker = GrammarChecker(GrammarBudget(time_s=5.0, memory_bytes=1 << 30, workers=1))
    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    request = request_decoder.decode(json.dumps(body))
    plan = plan_tools(request, ToolSettings(), Renderer(), checker)
    assert plan.constraint is not None and checker.checks == 2  # the schema, then the grammar around it
    plan_tools(request, ToolSettings(), Renderer(), checker)
    assert checker.checks == 2
    checker.close()
