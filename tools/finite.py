"""Schemas that no finite value satisfies: a local $ref cycle that every value must follow.

The grammar engine accepts such a schema, and a model then writes `{"a": {"a": ` until it runs out of
tokens; tools/schema.py refuses it with a 400 instead.
"""

from __future__ import annotations

from typing import Any

_SCALARS = frozenset({"string", "number", "integer", "boolean", "null"})


def endless_reference(schema: dict[str, Any]) -> str | None:
    """The local $ref that makes the schema impossible to satisfy with a finite value, if one does.

    `{"$defs": {"a": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}}}`
    only admits infinite values; the grammar accepts it and a model writes `{"a": ` until it runs out of tokens.
    A reference is finite once its target is shown to have a finite value (a fixed point over the references);
    anything else (patterns, bounds) is left to the grammar engine.
    """
    targets: dict[str, Any] = {}
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref not in targets:
                targets[ref] = _resolve(schema, ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    finite = {ref: target is None for ref, target in targets.items()}  # unresolvable: llguidance reports it
    changed = True
    while changed:
        changed = False
        for ref, target in targets.items():
            if not finite[ref] and _has_finite_value(target, finite):
                finite[ref] = changed = True
    if _has_finite_value(schema, finite):
        return None
    return next((ref for ref, ok in finite.items() if not ok), "#")


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _has_finite_value(node: Any, finite: dict[str, bool]) -> bool:
    if not isinstance(node, dict):
        return node is not False
    if isinstance(node.get("$ref"), str) and not finite.get(node["$ref"], True):
        return False
    if any(not _has_finite_value(sub, finite) for sub in node.get("allOf") or ()):
        return False
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if isinstance(branches, list) and branches and not any(_has_finite_value(b, finite) for b in branches):
            return False
    types = node.get("type")
    types = {types} if isinstance(types, str) else set(types) if isinstance(types, list) else None
    if types is None or types & _SCALARS:
        return True  # a scalar will do (without "type", null among others)
    if "object" in types:
        properties = given if isinstance(given := node.get("properties"), dict) else {}
        extra = node.get("additionalProperties", True)
        if all(_has_finite_value(properties.get(name, extra), finite) for name in node.get("required") or ()
               if isinstance(name, str)):
            return True
    if "array" in types:
        needed = node.get("minItems", 0)
        prefix = listed if isinstance(listed := node.get("prefixItems"), list) else []
        items = node.get("items", True)
        if not isinstance(needed, int) or needed <= 0 or all(
                _has_finite_value(prefix[i] if i < len(prefix) else items, finite) for i in range(min(needed, 64))):
            return True
    return False
