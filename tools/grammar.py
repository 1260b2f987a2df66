"""Grammars (llguidance's Lark dialect) that make tool calls and JSON output valid by construction.

A tool call in the Hermes/Qwen format is

    <tool_call>
    {"name": "get_weather", "arguments": {...}}
    </tool_call>

The grammar spells the fixed parts out literally, offers only the allowed names, and embeds each tool's
parameter schema with `%json`, so the arguments are JSON that matches the schema, written the way
json.dumps writes it. After the last call only the end of the turn is allowed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from engines.base import Constraint
from tools.schema import JSON_OPTIONS, closed_objects


@dataclass(frozen=True, slots=True)
class CallMarkers:
    open: str  # e.g. "<tool_call>"
    close: str
    open_token: int | None  # the marker's id when it is a single token of the vocabulary
    close_token: int | None


def _marker(text: str, token: int | None) -> str:
    # A single-token marker is matched as that token (as the template writes it), else as text.
    return text if token is not None else json.dumps(text)


def _json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**closed_objects(schema), "x-guidance": JSON_OPTIONS})


def tool_calls_rules(tools: list[tuple[str, dict[str, Any]]], markers: CallMarkers, *, parallel: bool) -> list[str]:
    """Rules for `calls`: one call, or several when parallel."""
    open_, close = _marker(markers.open, markers.open_token), _marker(markers.close, markers.close_token)
    bodies = []
    rules = []
    for i, (name, schema) in enumerate(tools):
        head = json.dumps(f'{{"name": "{name}", "arguments": ')
        rules.append(f"body{i}: {head} args{i} \"}}\"")
        rules.append(f"args{i}: {_json(schema)}")
        bodies.append(f"body{i}")
    rules.append("body: " + " | ".join(bodies))
    rules.append(f'call: {open_} "\\n" body "\\n" {close}')
    rules.append('calls: call ("\\n" call)*' if parallel else "calls: call")
    return rules


def tool_calls_grammar(tools: list[tuple[str, dict[str, Any]]], markers: CallMarkers, *, parallel: bool) -> str:
    return "\n".join(["start: calls", *tool_calls_rules(tools, markers, parallel=parallel)])


def json_or_calls_grammar(schema: dict[str, Any], tools: list[tuple[str, dict[str, Any]]] | None,
                          markers: CallMarkers | None, *, parallel: bool) -> str:
    """JSON content matching `schema`, or (when tools are offered) tool calls instead."""
    if not tools or markers is None:
        return f"start: {_json(schema)}"
    rules = tool_calls_rules(tools, markers, parallel=parallel)
    return "\n".join(["start: json_answer | calls", f"json_answer: {_json(schema)}", *rules])


# Text of an "auto" reply: no "{" among its first three characters. Small models write a call as JSON,
# often after a stray character or two ('>{"name": ...'); such a reply would reach the client as text.
_TEXT = r"/(.|\n)+/ & ~/(.|\n){0,2}\{(.|\n)*/"
# A reply to tool results opens like prose: a letter, a digit, a currency sign, an emoji or a Markdown mark,
# never a code fence or a bracket (the default model retypes its call there, in a fence, in parentheses, ...).
_ANSWER = r"/[\p{L}\p{N}\p{Sc}\p{So}*#_\"'>-](.|\n)*/ & ~/(.|\n){0,2}\{(.|\n)*/"


def answer_grammar() -> str:
    """tool_choice "none" in reply to tool results: text that opens like prose (a small model told not to
    call retypes its call as text instead; docs/tools.md#answering-a-tool-result)."""
    return f"start: TEXT\nTEXT: {_ANSWER}"


def auto_grammar(tools: list[tuple[str, dict[str, Any]]], markers: CallMarkers, *, parallel: bool,
                 bare: bool = True) -> str:
    """tool_choice "auto": free text, or tool calls (after some text or not), or one bare JSON call.

    With `bare`, a reply that opens with "{" is a call written as bare JSON without the markers (small
    models do that), constrained like any call. Without it (a reply to tool results; docs/tools.md), calls
    need the markers and text may not open with JSON at all: small models answer a tool result by
    repeating the call as bare JSON. Free text costs the matcher a few microseconds per token.
    """
    rules = tool_calls_rules(tools, markers, parallel=parallel)
    if not bare:
        return "\n".join(["start: TEXT | TEXT? calls", f"TEXT: {_ANSWER}", *rules])
    # The "$id" keeps each tool's local $refs ("#/$defs/...", "#") pointing into its own schema.
    bare_call = {"anyOf": [{"type": "object", "properties": {
        "name": {"const": name}, "arguments": {"$id": f"urn:lodestar:tool:{name}", **schema}},
                       "required": ["name", "arguments"], "additionalProperties": False}
                      for name, schema in tools]}
    return "\n".join(["start: TEXT | bare | TEXT? calls", f"TEXT: {_TEXT}", f"bare: {_json(bare_call)}", *rules])


def constraint(grammar: str) -> Constraint:
    return Constraint(grammar=grammar, key=hashlib.sha256(grammar.encode()).hexdigest())
