"""GET /playground/: a web page to try the served model, then copy the request as code (docs/playground.md);
POST /v1/playground/check: the page's way to check a request with the server's own rules.

Plain HTML, CSS and JavaScript modules shipped in the package: no build step. The page's files are public
(they hold no data); every API call it makes sends the key the user typed, kept in the tab's
sessionStorage.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.static_files import create_static_files_router

from app.protocol import encode
from app.resources import RequestCheck
from app.routes.chat import decode_body
from app.routes.health import served_model
from app.validation import resolve_model, validate_request
from chat.pipeline import checked_tools

PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"


def playground_router():  # type: ignore[no-untyped-def]
    return create_static_files_router(path="/playground", directories=[PAGE_DIR], html_mode=True,
                                      opt={"public": True}, name="playground")


@post("/v1/playground/check", status_code=200)
async def check_request(request: Request, state: State) -> Response[bytes]:
    """Check a chat-completions body exactly as the chat route does, tools and schemas included (their
    grammar compiled), without generating: the playground shows the error beside the field it names."""
    req = decode_body(await request.body())
    served = served_model(state)
    resolve_model(req.model, served.engine.model_info)
    validate_request(req, state.settings, served.engine.model_info)
    await checked_tools(req, state.settings, served, state.grammar_checker)
    return Response(encode(RequestCheck()), media_type="application/json")
