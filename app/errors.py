"""Errors as HTTP responses: an APIError (core/errors.py), Litestar's own errors and unexpected ones, all in
OpenAI's JSON shape with the request id."""

from __future__ import annotations

import logging
import uuid

from litestar import Request, Response
from litestar.exceptions import HTTPException

from core.errors import APIError, clip
from core.replies import encode
from store.base import StoreUnavailable

log = logging.getLogger("lodestar.errors")


def error_response(error: APIError, request_id: str | None = None) -> Response[bytes]:
    headers = dict(error.headers)
    # Unmatched routes bypass the request-id middleware; they get an id here.
    headers["X-Request-ID"] = request_id or uuid.uuid4().hex
    return Response(content=encode(error.body()), status_code=error.status, media_type="application/json",
                    headers=headers)


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def handle_api_error(request: Request, exc: APIError) -> Response[bytes]:
    return error_response(exc, _request_id(request))


def handle_http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (404 route, 405, 413 body size, …) in OpenAI's shape."""
    status = exc.status_code
    path = clip(request.url.path)
    messages = {
        404: f"Unknown path: {clip(request.method)} {path}",
        405: f"Method {clip(request.method)} is not allowed on {path}",
        413: "The request body is larger than the server accepts (see max_body_bytes)",
    }
    codes = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}
    message = messages.get(status, str(exc.detail))
    return error_response(APIError(status, message, code=codes.get(status)), _request_id(request))


def handle_store_unavailable(request: Request, exc: StoreUnavailable) -> Response[bytes]:
    """The shared state could not be reached (docs/deployment.md#when-the-store-is-unreachable)."""
    log.warning("store unreachable: %s", exc)
    return error_response(APIError(503, f"The state store is unreachable: {exc}", code="store_unavailable",
                                   type="server_error", headers={"Retry-After": "1"}), _request_id(request))


def handle_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    request_id = _request_id(request) or uuid.uuid4().hex
    log.exception("unexpected error in request %s", request_id)
    return error_response(APIError(
        500, f"The server had an error while processing your request (request id {request_id})",
        code="internal_error"), request_id)
