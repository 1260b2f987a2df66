"""GET /openapi.json: an OpenAPI 3.1 document of the running server, built from the types the handlers use.

The chat route decodes its body itself (for OpenAI-shaped errors that name the field), so Litestar cannot
infer it; the document is made here instead, from the msgspec types of every request and response body.
It is truthful for this server: security only when keys are configured, `model` limited to the served
model's id and aliases (others get 404). Structure is in the schemas; semantic bounds (the temperature
range, `n` up to `max_n`, …) are checked by chat/validation.py and answered with 400, which is listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Response, get
from litestar.datastructures import State

from app.resources import Health, KeyUsageList, Ready, RequestCheck, Session, SessionDeleted
from core.protocol import ChatCompletionRequest
from core.replies import ChatCompletion, ChatCompletionChunk, ErrorResponse, ModelList
from core.settings import Settings

JSON = "application/json"
SESSION_ID = {"name": "session_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}
SESSION_HEADER = {"name": "X-Session-ID", "in": "header", "required": False,
                  "description": "Continue this session: send only the new messages (docs/sessions.md)",
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    ok: type | None  # the 200 body's type (None: a text body)
    errors: tuple[int, ...]  # besides 401/403, which depend on the access kind
    access: str = "key"  # "key", "admin" or "public"
    request: type | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    extra_ok: dict[str, Any] = field(default_factory=dict)  # more media types of the 200 answer


CHAT_ERRORS = (400, 404, 409, 413, 415, 429, 501, 503, 504)
OPERATIONS = [
    *(Operation("post", path, "Create a chat completion (OpenAI-compatible); with stream=true, server-sent events",
                ChatCompletion, CHAT_ERRORS, request=ChatCompletionRequest, parameters=(SESSION_HEADER,),
                # OpenAPI 3.1: the schema of an event stream describes one event (3.2 would say itemSchema)
                extra_ok={"text/event-stream": {"schema": {
                    "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
                    "description": "One server-sent event: `data` is a ChatCompletionChunk as JSON; the last "
                                   "event's `data` is `[DONE]`", "x-chunk": ChatCompletionChunk.__name__}}})
      for path in ("/v1/chat/completions", "/api/v3/inference/chat/completions")),
    Operation("get", "/v1/models", "The served model", ModelList, (503,)),
    Operation("post", "/v1/playground/check", "Check a chat-completions body as the chat route would, without "
              "generating (the playground's field checks)", RequestCheck, (400, 404, 413, 415, 501, 503),
              request=ChatCompletionRequest),
    Operation("get", "/v1/sessions/{session_id}", "A session's transcript and token totals", Session,
              (400, 404), parameters=(SESSION_ID,)),
    Operation("delete", "/v1/sessions/{session_id}", "Forget a session", SessionDeleted, (400, 404, 409),
              parameters=(SESSION_ID,)),
    Operation("get", "/v1/admin/usage", "Usage per API key (kept across restarts)", KeyUsageList, (403,),
              access="admin"),
    Operation("get", "/metrics", "Prometheus metrics", None, ()),
    Operation("get", "/openapi.json", "This document", None, ()),
    Operation("get", "/health", "The process is up", Health, (), access="public"),
    Operation("get", "/ready", "The model is loaded and the engine healthy", Ready, (503,), access="public"),
]


def document(settings: Settings, models: list[str] | None = None) -> dict[str, Any]:
    """The document; `models` (the served model's id and aliases, once loaded) narrows `model` to them."""
    types = [op.ok for op in OPERATIONS if op.ok] + [op.request for op in OPERATIONS if op.request]
    _, components = msgspec.json.schema_components([*dict.fromkeys(types), ChatCompletionChunk, ErrorResponse],
                                                   ref_template="#/components/schemas/{name}")
    # logit_bias is decoded by chat/validation.py from its raw JSON (msgspec.Raw has no schema of its own).
    components["ChatCompletionRequest"]["properties"]["logit_bias"] = {"anyOf": [
        {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"}, "additionalProperties": {"type": "number"},
         "description": "token id -> bias added to its logit before sampling"}, {"type": "null"}]}
    if models:
        components["ChatCompletionRequest"]["properties"]["model"] = {"type": "string", "enum": models}
    keys = bool(settings.server.api_keys)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, keys, settings)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Lodestar", "version": "1",
                 "description": "An OpenAI-compatible chat-completions server (docs/ in the repository)."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if keys:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"},
                                                "adminKey": {"type": "http", "scheme": "bearer"}}
    return doc


def _operation(op: Operation, keys: bool, settings: Settings) -> dict[str, Any]:
    error = {"content": {JSON: {"schema": _ref(ErrorResponse)}}}
    ok_content = ({JSON: {"schema": _ref(op.ok)}} if op.ok else {"text/plain": {"schema": {"type": "string"}}})
    if op.path == "/openapi.json":
        ok_content = {JSON: {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {**ok_content, **op.extra_ok}}}
    statuses = set(op.errors)
    if op.access == "admin":
        statuses |= {401, 403}  # without admin keys the route answers 403 admin_disabled
    elif op.access == "key" and keys:
        statuses.add(401)
    for status in sorted(statuses):
        responses[str(status)] = {"description": _DESCRIPTIONS[status], **error}
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method}_{op.path}",
                           "parameters": list(op.parameters), "responses": responses}
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.request)}},
                              "description": f"At most {settings.connections.max_body_bytes} bytes"}
    if op.access == "admin" or (op.access == "key" and keys):
        out["security"] = [{"adminKey" if op.access == "admin" else "apiKey": []}]
    elif op.access == "public":
        out["security"] = []
    return out


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


_DESCRIPTIONS = {
    400: "The request is invalid; `error.param` names the field",
    401: "No API key, or an unknown one",
    403: "An admin route without an admin key",
    404: "Unknown model or session",
    409: "Another request on the same session is running",
    413: "The body is larger than max_body_bytes",
    415: "The Content-Type is not JSON (a request without one is read as JSON)",
    429: "A queue or rate limit; see Retry-After",
    501: "The engine cannot do what the request asks (for example grammars on some SGLang workers)",
    503: "The engine is not ready, or a request waited past the queue timeout; see Retry-After",
    504: "The engine did not answer in time",
}


@get("/openapi.json")
async def openapi(state: State) -> Response[bytes]:
    served = state.get("served")
    models = [served.engine.model_info.id, *served.engine.model_info.aliases] if served is not None else None
    return Response(msgspec.json.encode(document(state.settings, models)), media_type=JSON)
