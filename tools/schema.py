"""Tool and response-format schemas, checked up front: every problem is a 400 that points into the schema.

Three checks, in order: our own bounds (count, size, depth), the JSON Schema metaschema (`jsonschema`), and
what the grammar engine (llguidance) can enforce. A keyword the grammar cannot express is refused by name,
never dropped silently: a call that is "constrained" by a schema we ignored would be a lie.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jsonschema
import llguidance
import msgspec

from app.errors import APIError, clip

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# JSON output is written as json.dumps writes it (what models are trained on); no whitespace games.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
EMPTY_OBJECT = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    max_bytes: int  # all schemas of one request, as JSON
    max_depth: int


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
        items = schema.items()
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


# Schemas that passed, by their JSON text: agents send the same tools with every request, and the
# metaschema check costs milliseconds per tool.
_PASSED: OrderedDict[str, str] = OrderedDict()
_PASSED_ENTRIES = 512


def check_schema(schema: Any, param: str, *, object_root: bool) -> str:
    """Check one schema; return its llguidance grammar (the JSON grammar that enforces it)."""
    key = f"{object_root}:{msgspec.json.encode(schema).decode()}"
    grammar = _PASSED.get(key)
    if grammar is not None:
        _PASSED.move_to_end(key)
        return grammar
    grammar = _check(schema, param, object_root=object_root)
    _PASSED[key] = grammar
    if len(_PASSED) > _PASSED_ENTRIES:
        _PASSED.popitem(last=False)
    return grammar


def _check(schema: Any, param: str, *, object_root: bool) -> str:
    if not isinstance(schema, dict):
        raise _invalid(f"'{param}' must be a JSON Schema object", param)
    if object_root and schema.get("type", "object") != "object":
        kind = schema.get("type")
        shown = repr(clip(kind)) if isinstance(kind, str) else clip(repr(kind))
        raise _invalid(f"'{param}' must describe a JSON object (\"type\": \"object\"), got type {shown}", param)
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise _invalid(f"'{param}{where}' is not a valid JSON Schema: {clip(exc.message, 300)}",
                       f"{param}{where}") from None
    except (jsonschema.exceptions.UnknownType, ValueError, TypeError) as exc:
        raise _invalid(f"'{param}' is not a valid JSON Schema: {clip(str(exc), 300)}", param) from None
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error or messages:
        problem = " ".join((messages[0] if messages else "unknown error").split())
        unimplemented = re.search(r'Unimplemented keys: \["([^"]+)"', problem)
        where = param
        if unimplemented:
            inner = _path_of_key(schema, unimplemented.group(1))
            where = f"{param}.{inner}" if inner else param
            problem = (f"the keyword '{unimplemented.group(1)}' is not supported by constrained decoding "
                       "(see docs/tools.md for the supported subset)")
        raise _invalid(f"'{where}' cannot be enforced: {clip(problem, 300)}", where, "unsupported_schema")
    return grammar


def check_size(schemas: list[tuple[str, Any]], limits: SchemaLimits) -> None:
    total = 0
    for param, schema in schemas:
        total += len(msgspec.json.encode(schema))
        if total > limits.max_bytes:
            raise _invalid(f"The request's schemas are larger than {limits.max_bytes} bytes of JSON", param,
                           "schema_too_large")
        if _depth(schema, limits.max_depth) > limits.max_depth:
            raise _invalid(f"'{param}' is nested deeper than {limits.max_depth} levels", param, "schema_too_large")


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
