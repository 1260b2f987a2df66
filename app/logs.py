"""Logging: every line carries the id of the request it was written for; text or one JSON object per line.

The id lives in a context variable set by the request-id middleware (and narrowed by the chat route to the
completion id the client sees in X-Request-ID), so any logger called while serving a request, in Lodestar,
Litestar or uvicorn, tags its line without being told. One access line per request replaces uvicorn's,
which cannot know the id.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from typing import Any, Literal

import msgspec

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("lodestar.access")
_installed = False


def _install_record_factory() -> None:
    """Give every log record a `request_id` attribute (once per process)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = previous(*args, **kwargs)
        made.request_id = REQUEST_ID.get()
        return made

    logging.setLogRecordFactory(record)
    _installed = True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, process id (one of --workers N),
    and any fields passed in
    `extra={"fields": {...}}` (the access line's method, path, status and duration)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"), "pid": record.process,
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure(level: str, fmt: Literal["text", "json"]) -> None:
    """The root handler on stderr for Lodestar, Litestar and uvicorn alike (uvicorn is run without its own
    logging config)."""
    _install_record_factory()
    if fmt == "json":  # progress bars (weights loading) would break the one-object-per-line stream
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per image fetch or SGLang call is noise


def log_access(method: str, path: str, status: int, seconds: float) -> None:
    access_log.info("%s %s %d %.1f ms", method, path, status, seconds * 1000,
                    extra={"fields": {"method": method, "path": path, "status": status,
                                      "duration_ms": round(seconds * 1000, 1)}})
