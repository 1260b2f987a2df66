"""Lodestar's own response bodies (sessions, key usage, probes): typed, so the OpenAPI document describes
exactly what the handlers send."""

from __future__ import annotations

from typing import Any

import msgspec

from core.replies import ListObject


class Session(msgspec.Struct):
    id: str
    created: int
    updated: int
    turns: int
    tokens: int  # the transcript's token ids, prompt and replies
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    messages: list[dict[str, Any]]
    object: str = "session"


class SessionDeleted(msgspec.Struct):
    id: str
    deleted: bool = True
    object: str = "session.deleted"


class KeyUsage(msgspec.Struct):
    key_id: str  # a digest of the key, stable across restarts
    key: str  # a hint such as "sk-...abcd", "anonymous" or "unknown"
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    object: str = "key_usage"


class KeyUsageList(ListObject[KeyUsage]):
    """GET /v1/admin/usage."""


class Health(msgspec.Struct):
    status: str


class Ready(msgspec.Struct, omit_defaults=True):
    status: str
    model: str
    engine: dict[str, int]  # the engine's load and cache figures (as in /metrics)
    kernels: dict[str, Any] | None = None  # the embedded engine's choice of weight format and matmul library


class RequestCheck(msgspec.Struct):
    """A chat-completions body that passed every check of the chat route (POST /v1/playground/check)."""

    ok: bool = True
    object: str = "chat.completion.check"
