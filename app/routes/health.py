"""GET /health (the process is up) and GET /ready (the model is loaded and the engine healthy)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from app.resources import Health, Ready
from chat.pipeline import ServedModel
from core.errors import APIError
from core.protocol import encode


def served_model(state: State) -> ServedModel:
    served = state.get("served")
    if served is not None and not served.engine.ready():  # loaded, but its workers do not answer
        raise APIError(503, "The engine is unavailable: no worker is answering; retry shortly",
                       code="engine_unavailable", headers={"Retry-After": "5"})
    if served is None:
        error = state.get("load_error")
        detail = f": loading failed: {error}" if error else ": the model is still loading"
        raise APIError(503, f"The engine is not ready{detail}", code="engine_not_ready",
                       headers={"Retry-After": "5"})
    return served


@get("/health", opt={"public": True})
async def health() -> Response[bytes]:
    return Response(encode(Health(status="ok")), media_type="application/json")


@get("/ready", opt={"public": True})
async def ready(state: State) -> Response[bytes]:
    served = served_model(state)
    return Response(encode(Ready(status="ready", model=served.engine.model_info.id, engine=served.engine.stats())),
                    media_type="application/json")
