"""The Litestar application: routes, auth guard, error handlers, request ids, model loading."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import KeyStore, require_api_key
from app.errors import handle_api_error, handle_http_exception, handle_store_unavailable, handle_unexpected
from app.heap import HeapTrimmer
from app.limits import FLUSH_INTERVAL_S, KeyLimiter
from app.logs import REQUEST_ID, log_access
from app.metrics import Metrics, metrics_middleware
from app.routes import ROUTES
from app.routes.playground import playground_router
from chat.pipeline import ServedModel
from core.errors import APIError
from core.settings import Settings
from sessions.manager import SessionManager
from store.base import Store, StoreUnavailable, open_store
from tools.checker import GrammarBudget, GrammarChecker

log = logging.getLogger("lodestar")

ModelSource = ServedModel | Callable[[], ServedModel]


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every request an id, echo it in an X-Request-ID header, tag its log lines with it (app/logs.py)
    and end it with an access line. A handler may name the request itself (chat: its completion id)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                given = [v for k, v in headers if k.lower() == b"x-request-id"]
                if given:
                    request_id = given[0].decode()
                else:
                    headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.set(request_id)
            log_access(str(scope.get("method", "")), scope["path"], status, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    return middleware


def database_path(settings: Settings) -> Path:
    """The SQLite file of the state (sessions, usage) when no store URL is set."""
    return Path(settings.sessions.path).expanduser() if settings.sessions.path else \
        settings.data_path() / "sessions.sqlite3"


async def open_state(settings: Settings) -> Store:
    store = settings.store
    return await open_store(store.url, database_path(settings), timeout_s=store.timeout_s,
                            pool_size=store.pool_size)


def forget_in_engine(state: State) -> Callable[[str], None]:
    """Tell the served engine (once loaded) that a session is gone, if it keeps anything for sessions."""

    def forget(key: str) -> None:
        served = state.get("served")
        if served is not None:
            served.engine.forget_session(key)

    return forget


async def _flush_usage_forever(limits: KeyLimiter) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        try:
            await limits.flush()
        except StoreUnavailable as exc:  # serving goes on; the increments stay in memory for the next try
            log.warning("writing usage totals failed: %s", exc)


def _attach_state(state: State, settings: Settings, store: Store) -> None:
    """What the routes share, over the opened store: sessions and per-key limits."""
    state.store = store
    state.sessions = SessionManager(store, idle_timeout_s=settings.sessions.idle_timeout_s,
                                    busy_timeout_s=settings.sessions.busy_timeout_s, on_forget=forget_in_engine(state))
    state.limits = KeyLimiter(store, settings.limits)


def _lifespan(settings: Settings, model: ModelSource,
              load_first: bool) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down: the store opened, usage flushed, the model loaded (in the background, or
    before serving with `load_first`), everything closed."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state = app.state
        task = None
        try:
            store = await open_state(settings)
        except StoreUnavailable as exc:
            log.error("cannot start: %s", exc)  # uvicorn then exits; a supervisor retries
            raise
        _attach_state(state, settings, store)
        state.heap.start()
        flusher = asyncio.create_task(_flush_usage_forever(state.limits))
        if isinstance(model, ServedModel):
            state.served = model
        else:
            async def load() -> None:
                try:
                    state.served = await asyncio.to_thread(model)
                except Exception as exc:  # /ready reports it; the process stays up to say so
                    log.exception("loading the model failed")
                    state.load_error = str(exc)
            task = asyncio.create_task(load())
        try:
            if load_first and task is not None:
                await task
                if state.load_error is not None:
                    raise RuntimeError(f"loading the model failed: {state.load_error}")
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
            flusher.cancel()
            served = state.get("served")
            if served is not None:
                await served.engine.close()
            try:
                await state.limits.flush()
            except StoreUnavailable as exc:
                log.error("the last usage increments could not be written: %s", exc)
            await state.store.close()
            state.heap.stop()
            state.grammar_checker.close()

    return lifespan


def create_app(settings: Settings, model: ModelSource, *, load_first: bool = False) -> Litestar:
    """`model` is a ready ServedModel, or a blocking loader that is run in a thread at start-up: while it
    loads the server answers (/ready: 503), or with `load_first` it starts serving only once loaded."""
    state = State({"settings": settings, "key_store": KeyStore(settings.server.api_keys),
                   "admin_key_store": KeyStore(settings.server.admin_keys), "served": None, "load_error": None})
    state.heap = HeapTrimmer(settings.server.heap_trim_interval_s)
    state.grammar_checker = GrammarChecker(GrammarBudget(
        settings.tools.grammar_budget_s, settings.tools.grammar_memory_bytes, settings.tools.grammar_workers))
    state.metrics = Metrics(state)
    return Litestar(
        route_handlers=[*ROUTES, *([playground_router()] if settings.server.playground else [])],
        guards=[require_api_key],
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            StoreUnavailable: handle_store_unavailable,
            Exception: handle_unexpected,
        },
        middleware=[request_id_middleware, metrics_middleware],
        lifespan=[_lifespan(settings, model, load_first)],
        state=state,
        request_max_body_size=settings.connections.max_body_bytes,
        openapi_config=None,  # app/openapi.py serves the document
        logging_config=None,  # app/logs.py configures logging, with request ids
        debug=False,
    )
