"""The session stage: the stored conversation and the request's messages -> this turn's conversation, and
the exact token ids it continues from.

Continuation rules (docs/sessions.md):
- the request's messages start with the stored conversation: the client sent the full history;
- the request has only user and tool messages: they are new, and appended to the stored conversation;
- anything else rewrites the history and replaces the transcript (the prefix cache still reuses the
  longest common token prefix).
When the turn continues the stored conversation, its prompt is the stored token ids plus the rendering of
only the new messages, so the cached prefix always matches, even for templates that would render earlier
turns differently now (e.g. reasoning templates dropping old thinking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from core.protocol import Message
from store.records import Transcript


def _content_key(content: Any) -> Any:
    if content in (None, ""):
        return ""
    if isinstance(content, list):
        return tuple(msgspec.json.encode(part) for part in content)
    return content


def message_key(message: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two messages the same turn (ids, names and reasoning sent back or not do not)."""
    calls = tuple((c.get("function", {}).get("name"), c.get("function", {}).get("arguments"))
                  for c in message.get("tool_calls") or ())
    return message.get("role"), _content_key(message.get("content")), calls, message.get("tool_call_id")


@dataclass(slots=True)
class SessionTurn:
    messages: list[Message]  # this turn's whole conversation
    history: list[Message] = field(default_factory=list)  # the stored part it continues (empty: none)
    history_ids: list[int] = field(default_factory=list)  # the stored conversation's exact token ids


def merge(stored: Transcript | None, messages: list[Message]) -> SessionTurn:
    """This turn's conversation: the stored one continued (full history, or new messages only), or the
    request's messages alone (a new session, or a rewrite)."""
    if stored is None or not stored.messages:
        return SessionTurn(messages=messages)
    incoming = [msgspec.to_builtins(m) for m in messages]
    old = [message_key(m) for m in stored.messages]
    new = [message_key(m) for m in incoming]
    history = msgspec.convert(stored.messages, list[Message])
    if len(new) > len(old) and new[: len(old)] == old:  # the full history, and more
        return SessionTurn(messages=[*history, *messages[len(old):]], history=history, history_ids=stored.token_ids)
    if all(m.get("role") in ("user", "tool") for m in incoming):  # new messages only
        return SessionTurn(messages=[*history, *messages], history=history, history_ids=stored.token_ids)
    return SessionTurn(messages=messages)  # a rewrite


def continue_prompt(history_ids: list[int], history_text: str, full_text: str, end_of_turn: str | None,
                    end_of_turn_ids: tuple[int, ...], tokenize: Any) -> list[int] | None:
    """The stored ids plus the tokens of what `full_text` adds after the stored conversation.

    The new part begins after as many end-of-turn markers as the stored conversation has, which holds
    even when the template re-renders earlier turns differently. None when that cannot be found.
    """
    if not end_of_turn or not history_ids:
        return None
    count = history_text.count(end_of_turn)
    at = -1
    for _ in range(count):
        at = full_text.find(end_of_turn, at + 1)
        if at < 0:
            return None
    if count == 0:
        return None
    tail = full_text[at + len(end_of_turn):]
    ids = list(history_ids)
    if ids[-1] not in end_of_turn_ids:  # the stored reply was cut short: close its turn
        tail = end_of_turn + tail
    return ids + tokenize(tail)


def reply_message(content: str | None, reasoning: str | None, calls: list[tuple[str, str, str]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in calls]
    return message


def next_transcript(owner: str, session_id: str, stored: Transcript | None, turn: SessionTurn,
                    reply: dict[str, Any], token_ids: list[int], usage: Any) -> Transcript:
    """The transcript after this turn: the conversation with the reply, and its exact token ids."""
    base = stored or Transcript(owner=owner, session_id=session_id)
    return Transcript(
        owner=owner, session_id=session_id,
        messages=[*(msgspec.to_builtins(m) for m in turn.messages), reply], token_ids=token_ids,
        turns=base.turns + 1, prompt_tokens=base.prompt_tokens + usage.prompt_tokens,
        completion_tokens=base.completion_tokens + usage.completion_tokens,
        cached_tokens=base.cached_tokens + usage.prompt_tokens_details.cached_tokens, created=base.created)
