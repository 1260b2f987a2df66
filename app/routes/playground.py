"""GET /playground/: a web page to try the served model, then copy the request as code (docs/playground.md).

Plain HTML, CSS and JavaScript modules shipped in the package: no build step. The page's files are public
(they hold no data); every API call it makes sends the key the user typed, kept in the tab's
sessionStorage.
"""

from __future__ import annotations

from pathlib import Path

from litestar.static_files import create_static_files_router

PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"


def playground_router():  # type: ignore[no-untyped-def]
    return create_static_files_router(path="/playground", directories=[PAGE_DIR], html_mode=True,
                                      opt={"public": True}, name="playground")
