"""Bearer API keys: stored as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from app.errors import APIError


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


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_api_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Litestar guard on every route not marked public."""
    if handler.opt.get("public"):
        return
    store: KeyStore = connection.app.state.key_store
    if not store.enabled:
        return
    token = bearer_token(connection.headers.get("authorization"))
    if token is None:
        raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                       code="missing_api_key")
    if not store.check(token):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
