"""GET /v1/admin/usage: what each API key has consumed, kept across restarts (needs an admin key)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from app.auth import key_hint
from app.resources import KeyUsage, KeyUsageList
from core.replies import encode
from sessions.manager import owner_of


@get("/v1/admin/usage", opt={"admin": True})
async def key_usage(state: State) -> Response[bytes]:
    hints = {owner_of(key): key_hint(key) for key in state.settings.server.api_keys}
    hints[owner_of(None)] = "anonymous"  # the one key of a server without api_keys
    data = []
    for owner, usage in sorted((await state.limits.usage()).items()):
        data.append(KeyUsage(key_id=owner, key=hints.get(owner, "unknown"), requests=usage.requests,
                             prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                             total_tokens=usage.prompt_tokens + usage.completion_tokens,
                             cached_tokens=usage.cached_tokens, reasoning_tokens=usage.reasoning_tokens))
    return Response(encode(KeyUsageList(data=data)), media_type="application/json")
