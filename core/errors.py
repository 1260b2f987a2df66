"""OpenAI-shaped errors: one exception type, one JSON shape, for every failure the API reports.

The HTTP layer turns an APIError into a response (app/errors.py); every layer below raises it."""

from __future__ import annotations

import re

import msgspec

from core.replies import ErrorBody, ErrorResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


ECHO_CHARS = 100  # of a client's string quoted in an error message (a model name, a tag, a path, …)
MESSAGE_CHARS = 1000  # of any error message, whatever it quotes
PARAM_CHARS = 500  # of `param`, which may carry a client's schema keys


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """A client's string as an error message shows it: whole up to `limit` characters, else its start and "…"."""
    return text if len(text) <= limit else text[:limit] + "…"


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        message = clip(message, MESSAGE_CHARS)  # the last guard: an error never carries a request's bulk back
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = clip(param, PARAM_CHARS) if param is not None else None
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


_PATH_MARK = " - at `$"
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


_BAD_TAG = re.compile(r"Invalid value '(.*)'$")


def _split_path(text: str) -> tuple[str, str | None]:
    """msgspec's message and the path it ends with (" - at `$.messages[0].role`"), without a regex: the
    text may carry the client's own strings, and a search with a greedy group would be quadratic in them."""
    at = text.find(_PATH_MARK)
    if at < 0 or not text.endswith("`"):
        return text, None
    path = text[at + len(_PATH_MARK) : -1]
    return text[:at], path.removeprefix(".") or None


def _clip_quoted(message: str) -> str:
    """msgspec quotes the client's value in some messages ("Invalid enum value '…'"): clip that value."""
    first, last = message.find("'"), message.rfind("'")
    if 0 <= first < last:
        return message[: first + 1] + clip(message[first + 1 : last]) + message[last:]
    return message


def from_decode_error(exc: msgspec.DecodeError) -> APIError:
    """Turn msgspec's message ("Expected `int`, got `str` - at `$.n`") into a 400 naming the param."""
    message, param = _split_path(str(exc))
    if isinstance(exc, msgspec.ValidationError):
        missing = _MISSING.match(message)
        if missing:  # msgspec's path stops at the object; the param is the missing field itself
            param = f"{param}.{missing.group(1)}" if param else missing.group(1)
            return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                            code="missing_required_parameter")
        bad_tag = _BAD_TAG.match(message)
        if bad_tag and param and param.endswith(".type") and ".content[" in param:
            return APIError(400, f"Unsupported content part type '{clip(bad_tag.group(1))}' at '{param}': this server "
                            "accepts 'text' and 'image_url' parts.", param=param, code="invalid_content_part")
        if bad_tag and param and param.endswith(".role"):
            return APIError(400, f"Unsupported message role '{clip(bad_tag.group(1))}' at '{param}': expected system, "
                            "developer, user, assistant or tool.", param=param, code="invalid_type")
        message = _clip_quoted(message)
        if param:
            message = f"Invalid request: {message} at '{param}'"
        return APIError(400, message, param=param, code="invalid_type")
    return APIError(400, f"We could not parse the JSON body of your request: {message}", code="invalid_json")
