"""What the store keeps, as plain records."""

from __future__ import annotations

import array
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec


@dataclass(slots=True)
class Transcript:
    owner: str  # digest of the API key that made the session
    session_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # the conversation, replies included
    token_ids: list[int] = field(default_factory=list)  # prompt + reply of the last turn, exactly
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


TRANSCRIPT_COLUMNS = ("owner, id, messages, token_ids, turns, prompt_tokens, completion_tokens, cached_tokens, "
                      "created, updated")


def transcript_row(t: Transcript) -> tuple[object, ...]:
    return (t.owner, t.session_id, msgspec.json.encode(t.messages), array.array("i", t.token_ids).tobytes(),
            t.turns, t.prompt_tokens, t.completion_tokens, t.cached_tokens, t.created, t.updated)


def transcript_of(row: Sequence[Any]) -> Transcript:
    ids = array.array("i")
    ids.frombytes(bytes(row[3]))
    return Transcript(owner=row[0], session_id=row[1], messages=msgspec.json.decode(bytes(row[2])),
                      token_ids=ids.tolist(), turns=row[4], prompt_tokens=row[5], completion_tokens=row[6],
                      cached_tokens=row[7], created=row[8], updated=row[9])


USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


@dataclass(slots=True)
class UsageTotals:
    """What one key consumed (what it is billed on), or an increment of it."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: UsageTotals) -> None:
        for name in USAGE_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in USAGE_FIELDS)


@dataclass(frozen=True, slots=True)
class RateRefusal:
    """A request the key's per-minute window has no room for."""

    limit: str  # "RPM" or "TPM"
    allowed: int
    used: int
    retry_after_s: float
