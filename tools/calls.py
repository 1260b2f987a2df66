"""Tool calls out of generated text, incrementally: the same parser serves streaming and whole replies.

Text outside `<tool_call>…</tool_call>` is content; each complete call becomes a ParsedCall whose
arguments string is cut from the model's own text (the grammar fixes its layout), and a stream sends a
call only once it is complete, so what a stream sends and what a whole reply holds are the same string.
A call the model did not finish (max_tokens) is not content either: markup of an unfinished call never
reaches a client (it would be read as the model's answer); the reply's finish_reason says "length".
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from core.text import partial_suffix

log = logging.getLogger("lodestar.tools")

# Generated arguments that fail their schema despite the grammar: a bug worth counting.
schema_mismatches = 0


@dataclass(frozen=True, slots=True)
class ParsedCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ToolCallParser:
    open: str
    close: str
    schemas: dict[str, dict[str, Any]]
    bare: bool = False  # a reply that is a single JSON object {"name", "arguments"} is one call
    calls: list[ParsedCall] = field(default_factory=list)
    repeated: bool = False  # the model began repeating a call it already made: the reply is over
    _pending: str = ""
    _in_call: bool = False
    _shown: bool = False  # some content was already given out

    def feed(self, text: str) -> list[str | ParsedCall]:
        """New output text -> content pieces and complete calls, in order."""
        self._pending += "" if self.repeated else text  # after a repeated call the reply is over
        out: list[str | ParsedCall] = []
        if self.bare and not self._shown and not self._in_call and not self.calls and _may_be_bare_call(self._pending):
            return out  # a bare JSON call, or JSON content: decided at the end
        while not self.repeated:
            if self._in_call:
                end = self._pending.find(self.close)
                if end == -1:
                    return out
                body, self._pending = self._pending[:end], self._pending[end + len(self.close):]
                self._in_call = False
                call = self._parse(body)
                if call is None:  # not a call after all: keep the text
                    out.append(f"{self.open}{body}{self.close}")
                elif self._record(call):
                    out.append(call)
                continue
            start = self._pending.find(self.open)
            if start != -1:
                before = self._pending[:start]
                self._pending = self._pending[start + len(self.open):]
                self._in_call = True
                if before.strip():
                    out.append(before.rstrip())  # whitespace before a call is dropped however it arrives
                    self._shown = True
                continue
            # Hold back what could be the start of a marker, and trailing whitespace before a call.
            keep = partial_suffix(self._pending, self.open)
            ready = self._pending[: len(self._pending) - keep]
            shown = ready.rstrip() if ready.strip() else ""
            if shown:
                out.append(shown)
                self._shown = True
                self._pending = self._pending[len(shown):]
            return out
        return out

    def finish(self, truncated: bool = False) -> list[str | ParsedCall]:
        """The end of the output: held-back text is content; an unfinished call is dropped.

        `truncated`: the output was cut off (max_tokens). In bare mode the grammar makes a reply that opens
        with "{" a call, so such a reply cut off is an unfinished call too, not content.
        """
        if self._in_call:
            log.info("dropped an unfinished tool call (%d characters)", len(self._pending))
        # The start of a marker cut off by max_tokens ("<tool_c") is debris too (streams never showed it).
        rest = "" if self._in_call else self._pending[: len(self._pending) - partial_suffix(self._pending, self.open)]
        self._pending, self._in_call = "", False
        if self.bare and not self._shown and not self.calls and _may_be_bare_call(rest):
            call = self._parse(_unfenced(rest))
            if call is not None and self._record(call):
                return [call]
            if call is None and truncated and rest.lstrip().startswith("{"):
                log.info("dropped an unfinished bare tool call (%d characters)", len(rest))
                return []
        if self.calls and not rest.strip():
            return []
        return [rest] if rest.strip() or not self.calls and rest else []

    def _parse(self, body: str) -> ParsedCall | None:
        try:
            value = json.loads(body)
            name, arguments = value["name"], value.get("arguments", {})
            if not isinstance(name, str) or not isinstance(arguments, dict):
                return None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        schema = self.schemas.get(name)
        if schema is None:
            log.warning("the model called an unknown tool %r", name)
            return None
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(arguments))
        if errors:
            global schema_mismatches
            schema_mismatches += 1
            log.error("tool call arguments for %r do not match the schema: %s", name, errors[0].message)
        text = _arguments_text(body, name, arguments)
        return None if text is None else ParsedCall(id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments=text)

    def _record(self, call: ParsedCall) -> bool:
        """Keep a new call; an identical repeat ends the reply (small models loop on parallel calls)."""
        if any(c.name == call.name and c.arguments == call.arguments for c in self.calls):
            self.repeated = True
            self._pending = ""
            return False
        self.calls.append(call)
        return True


def _arguments_text(body: str, name: str, arguments: dict[str, Any]) -> str | None:
    """The arguments as the model wrote them when the call has the grammar's exact layout (JSON numbers
    such as 1e999 have no float equivalent, so re-serialising could not carry them), else json.dumps."""
    head = f'{{"name": {json.dumps(name)}, "arguments": '
    body = body.strip()
    if body.startswith(head) and body.endswith("}"):
        return body[len(head):-1]
    try:
        return json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except ValueError:  # an overflowing number in an unconstrained (fenced) call: not usable as a call
        return None


_FENCE = "```json"


def _may_be_bare_call(text: str) -> bool:
    """A reply that begins like a call written as bare JSON, fenced or not (small models do both)."""
    start = text.lstrip()
    return start.startswith(("{", _FENCE)) or (bool(start) and _FENCE.startswith(start))


def _unfenced(text: str) -> str:
    """The JSON inside a ```json fence (the fenced form is not constrained, so it is validated only)."""
    body = text.strip()
    if body.startswith(_FENCE) and body.endswith("```"):
        body = body[len(_FENCE):-3]
    return body.strip()
