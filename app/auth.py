"""Bearer API keys: stored as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler

from core.errors import APIError
from sessions.manager import owner_of


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str) -> bool:
        digest = _digest(presented)
        found = False
        for known in self._digests:  # no early exit: timing does not reveal which key matched
            found |= hmac.compare_digest(digest, known)
        return found


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom a request counts against, derived once from its Bearer token (caller_of)."""

    tenant: str  # whose limits and usage: the key's digest; without configured keys, the one anonymous key
    owner: str  # whose sessions: the token's digest, keys or not (another token never reaches them)


def caller_of(request: Request, state: State) -> Caller:
    bearer = bearer_token(request.headers.get("authorization"))
    # Without configured keys every client is one anonymous key for the limits (see app/limits.py).
    return Caller(tenant=owner_of(bearer if state.key_store.enabled else None), owner=owner_of(bearer))


def key_hint(key: str) -> str:
    """How a key is shown to admins: enough to tell keys apart, not enough to use one."""
    return f"{key[:3]}...{key[-4:]}" if len(key) >= 12 else "..." + key[-2:]


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def several_credentials(lines: list[str]) -> bool:
    """Whether the Authorization header lines carry more than one credential: several lines, or one Bearer
    line with a comma (repeated lines folded into one, as proxies and some servers do; a Bearer token never
    holds a comma, RFC 6750)."""
    return len(lines) > 1 or (len(lines) == 1 and "," in lines[0] and lines[0].lstrip().lower().startswith("bearer"))


async def require_api_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Litestar guard on every route: none for routes marked public, an admin key for routes marked admin
    (which answer 403 while no admin key is configured), an API key for the rest when keys are configured.
    On every route but the public ones, more than one Authorization header is a 400, keys or not: without
    keys the bearer token still decides whose sessions a request reaches. Asynchronous although it never
    waits: Litestar runs a synchronous guard in a thread, a hop on every request."""
    if handler.opt.get("public"):
        return
    presented = connection.headers.getall("authorization", [])
    if several_credentials(presented):  # which one counts would be a guess (a proxy may have added one)
        raise APIError(400, "The request has more than one Authorization header (or one that joins several with "
                       "commas); send exactly one: 'Authorization: Bearer YOUR_KEY'.",
                       code="multiple_authorization_headers")
    admin = bool(handler.opt.get("admin"))
    store: KeyStore = connection.app.state.admin_key_store if admin else connection.app.state.key_store
    if not store.enabled:
        if admin:
            raise APIError(403, "Admin routes are disabled: no admin keys are configured (admin_keys).",
                           code="admin_disabled")
        return
    token = bearer_token(presented[0] if presented else None)
    if token is None:
        raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                       code="missing_api_key")
    if not store.check(token):
        if admin and connection.app.state.key_store.check(token):
            raise APIError(403, "This route needs an admin key; an API key is not enough.",
                           code="admin_key_required")
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
