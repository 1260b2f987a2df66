"""Tool and response-format schemas, checked up front: every problem is a 400 that points into the schema.

Four checks, in order: our own bounds (count, size, depth, numbers llguidance can hold), the JSON Schema
metaschema (`jsonschema`), that the schema has a finite instance at all, and what the grammar engine (llguidance)
can enforce, in a child process with a time and memory budget (tools/checker.py). A keyword the grammar
cannot express is refused by name, never dropped silently: a call that is "constrained" by a schema we
ignored would be a lie.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
import llguidance
import msgspec

from core.errors import APIError, clip
from tools.checker import Deadline, GrammarBusy, GrammarChecker, GrammarTooComplex
from tools.finite import endless_reference

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # only in the type stubs

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# JSON output is written as json.dumps writes it (what models are trained on); no whitespace games.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
EMPTY_OBJECT = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    max_bytes: int  # all schemas of one request, as JSON
    max_depth: int
    # optional properties of one object: llguidance keeps ~4 parser items per one, and fails mid-generation
    # past 2,000 items in a row (~500 properties), after the reply has begun
    max_optional_properties: int = 256


def _invalid(message: str, param: str, code: str = "invalid_tool_schema") -> APIError:
    return APIError(400, message, param=param, code=code)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value; stops counting past `limit` (an adversarial schema can be deep)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _path_of_key(schema: Any, key: str, path: str = "") -> str | None:
    """Where a keyword first appears in a schema (for errors that name the keyword but not the place)."""
    if isinstance(schema, dict):
        if key in schema:
            return f"{path}.{key}" if path else key
        items: Iterable[tuple[Any, Any]] = schema.items()
    elif isinstance(schema, list):
        items = ((f"[{i}]", v) for i, v in enumerate(schema))
    else:
        return None
    for name, child in items:
        sub = f"{path}{name}" if name.startswith("[") else (f"{path}.{name}" if path else name)
        found = _path_of_key(child, key, sub)
        if found:
            return found
    return None


# Verdicts by JSON text: agents send the same tools with every request (the metaschema check costs milliseconds
# per tool), and a schema refused for its cost is refused again at once.
_VERDICTS: OrderedDict[str, str | APIError] = OrderedDict()
_VERDICT_ENTRIES = 512
_INT_RANGE = 1 << 63  # llguidance holds integers as signed 64-bit numbers


def check_schema(schema: Any, param: str, *, object_root: bool, checker: GrammarChecker, deadline: Deadline) -> str:
    """Check one schema; return its llguidance grammar (the JSON grammar that enforces it)."""
    key = f"{object_root}:{param}:{msgspec.json.encode(schema).decode()}"
    verdict = _VERDICTS.get(key)
    if verdict is None:
        try:
            verdict = _check(schema, param, object_root=object_root, checker=checker, deadline=deadline)
        except APIError as exc:
            if exc.code != "schema_too_complex" or deadline.cancelled.is_set():
                raise
            verdict = exc
        _VERDICTS[key] = verdict
        if len(_VERDICTS) > _VERDICT_ENTRIES:
            _VERDICTS.popitem(last=False)
    else:
        _VERDICTS.move_to_end(key)
    if isinstance(verdict, APIError):
        raise APIError(verdict.status, verdict.message, param=verdict.param, code=verdict.code)
    return verdict


def _check(schema: Any, param: str, *, object_root: bool, checker: GrammarChecker, deadline: Deadline) -> str:
    if not isinstance(schema, dict):
        raise _invalid(f"'{param}' must be a JSON Schema object", param)
    if object_root and schema.get("type", "object") != "object":
        kind = schema.get("type")
        shown = repr(clip(kind)) if isinstance(kind, str) else clip(repr(kind))
        raise _invalid(f"'{param}' must describe a JSON object (\"type\": \"object\"), got type {shown}", param)
    huge = _huge_integer(schema, param)
    if huge is not None:
        raise _invalid(f"'{huge}' holds an integer beyond 64 bits, which constrained decoding cannot represent",
                       huge, "unsupported_schema")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise _invalid(f"'{param}{where}' is not a valid JSON Schema: {clip(exc.message, 300)}",
                       f"{param}{where}") from None
    except (jsonschema.exceptions.UnknownType, ValueError, TypeError) as exc:
        raise _invalid(f"'{param}' is not a valid JSON Schema: {clip(str(exc), 300)}", param) from None
    endless = endless_reference(schema)
    if endless is not None:
        raise _invalid(f"'{param}' has no finite instance: every value of '{clip(endless)}' must contain another one",
                       param, "unsupported_schema")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise _invalid(f"'{param}' cannot be enforced: {clip(str(exc), 300)}", param, "unsupported_schema") from None
    is_error, messages = _verdict(grammar, param, checker, deadline)
    if is_error or messages:
        problem = " ".join((messages[0] if messages else "unknown error").split())[:500]
        unimplemented = re.search(r'Unimplemented keys: \["([^"]+)"', problem)
        where = param
        if unimplemented:
            inner = _path_of_key(schema, unimplemented.group(1))
            where = f"{param}.{inner}" if inner else param
            problem = (f"the keyword '{unimplemented.group(1)}' is not supported by constrained decoding "
                       "(see docs/tools.md for the supported subset)")
        elif "Unable to determine if regex is empty" in problem:  # llguidance gave up on an intersection
            raise _invalid(f"'{param}' is too complex to enforce: its patterns cannot be intersected", param,
                           "schema_too_complex")
        raise _invalid(f"'{where}' cannot be enforced: {clip(problem, 300)}", where, "unsupported_schema")
    return grammar


def check_grammar(grammar: str, param: str, checker: GrammarChecker, deadline: Deadline) -> None:
    """Check the whole grammar a request's engine will compile (its schemas together), within the budget: what
    passes here compiles in the server's own process within about the same time and memory."""
    is_error, messages = _verdict(grammar, param, checker, deadline)
    if is_error:
        problem = " ".join((messages[0] if messages else "unknown error").split())
        raise _invalid(f"'{param}' cannot be enforced: {clip(problem, 300)}", param, "unsupported_schema")


def _verdict(grammar: str, param: str, checker: GrammarChecker, deadline: Deadline) -> tuple[bool, list[str]]:
    try:
        return checker.validate(grammar, deadline)
    except GrammarTooComplex as exc:
        raise _invalid(f"'{param}' is too complex to enforce: {exc}", param, "schema_too_complex") from None
    except GrammarBusy as exc:
        raise APIError(503, f"The server is busy checking other schemas ({exc}); retry shortly", param=param,
                       code="server_busy", headers={"Retry-After": "1"}) from None


def _huge_integer(value: Any, path: str) -> str | None:
    """Where the first integer that does not fit in 64 bits is, if any."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, int) and not isinstance(node, bool) and not -_INT_RANGE <= node < _INT_RANGE:
            return where
        if isinstance(node, dict):
            stack.extend((child, f"{where}.{name}") for name, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))
    return None


def check_size(schemas: list[tuple[str, Any]], limits: SchemaLimits) -> None:
    total = 0
    for param, schema in schemas:
        total += len(msgspec.json.encode(schema))
        if total > limits.max_bytes:
            raise _invalid(f"The request's schemas are larger than {limits.max_bytes} bytes of JSON", param,
                           "schema_too_large")
        if _depth(schema, limits.max_depth) > limits.max_depth:
            raise _invalid(f"'{param}' is nested deeper than {limits.max_depth} levels", param, "schema_too_large")
        crowded = _crowded_object(schema, param, limits.max_optional_properties)
        if crowded is not None:
            raise _invalid(f"'{crowded}' has more than {limits.max_optional_properties} optional properties, more "
                           "than constrained decoding can follow; list some in 'required' or split the object",
                           crowded, "schema_too_complex")


def _crowded_object(schema: Any, path: str, limit: int) -> str | None:
    """Where an object with more than `limit` optional properties is, if any."""
    stack = [(schema, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict) and len(properties) > limit:
                required = listed if isinstance(listed := node.get("required"), list) else []
                if len(properties.keys() - {r for r in required if isinstance(r, str)}) > limit:
                    return where
            stack.extend((child, f"{where}.{name}") for name, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))
    return None


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")


def closed_objects(schema: Any) -> Any:
    """The schema the grammar enforces: objects with listed properties take no others unless they say so.

    JSON Schema allows unlisted properties by default, and small models use that to invent arguments; the
    generated arguments still validate against the caller's schema, they just never carry extras. Schemas
    with `allOf` are left as they are (closing one branch of an intersection would change its meaning).
    """
    if not isinstance(schema, dict) or "allOf" in json.dumps(schema):
        return schema
    return _close(schema)


def _close(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _close(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_VALUES:
        if isinstance(out.get(key), dict):
            out[key] = _close(out[key])
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_close(sub) for sub in out[key]]
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out \
            and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    return out
