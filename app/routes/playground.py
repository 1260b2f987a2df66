"""GET /playground/: a web page to try the served model, then copy the request as code (docs/playground.md);
POST /v1/playground/check: the page's way to check a request with the server's own rules.

Plain HTML, CSS and JavaScript modules shipped in the package: no build step. The page's files are public
(they hold no data); every API call it makes sends the key the user typed, kept in the tab's
sessionStorage.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path, PurePath

from litestar import Request, Response, Router, get, head, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response.file import ASGIFileResponse

from app.resources import RequestCheck
from app.routes.chat import json_body
from app.routes.served import served_model
from chat.pipeline import checked_stages
from chat.validation import resolve_model, validate_request
from core.replies import encode

PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"
INDEX = "index.html"


def page_files(folder: Path = PAGE_DIR) -> dict[str, Path]:
    """The page's files by their path under /playground/, listed once when the app is built.

    A request can only name one of these: no part of a URL ever reaches the file system, so a null byte,
    `..`, an encoded slash or a name too long for the OS is simply a name that is not in the list (404).
    """
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


def playground_router() -> Router:
    files = page_files()

    def serve(name: str, *, is_head: bool = False) -> ASGIFileResponse:
        path = files.get(name)
        if path is None:
            raise NotFoundException()
        try:
            stat = os.stat(path)
        except OSError:  # removed since start-up
            raise NotFoundException() from None
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return ASGIFileResponse(file_path=path, stat_result=stat, media_type=media_type, filename=path.name,
                                content_disposition_type="inline", is_head_response=is_head)

    @get("/", name="playground", sync_to_thread=False)
    def index() -> ASGIFileResponse:
        return serve(INDEX)

    @head("/", name="playground/index-head", sync_to_thread=False)
    def index_head() -> ASGIFileResponse:
        return serve(INDEX, is_head=True)

    @get("/{file_path:path}", name="playground/file", sync_to_thread=False)
    def page_file(file_path: FromPath[PurePath]) -> ASGIFileResponse:
        return serve(file_path.as_posix().lstrip("/") or INDEX)

    @head("/{file_path:path}", name="playground/head", sync_to_thread=False)
    def page_file_head(file_path: FromPath[PurePath]) -> ASGIFileResponse:
        return serve(file_path.as_posix().lstrip("/") or INDEX, is_head=True)

    return Router(path="/playground", route_handlers=[index, index_head, page_file, page_file_head],
                  opt={"public": True})


@post("/v1/playground/check", status_code=200)
async def check_request(request: Request, state: State) -> Response[bytes]:
    """Check a chat-completions body exactly as the chat route does, tools and schemas included (their
    grammar compiled), without generating: the playground shows the error beside the field it names."""
    req = await json_body(request)
    served = served_model(state)
    resolve_model(req.model, served.engine.model_info)
    validate_request(req, state.settings, served.engine.model_info)
    await checked_stages(req, state.settings, served, state.grammar_checker)
    return Response(encode(RequestCheck()), media_type="application/json")
