"""GET /health (the process is up) and GET /ready (the model is loaded and the engine healthy)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from app.resources import Health, Ready
from app.routes.served import served_model
from core.replies import encode


@get("/health", opt={"public": True})
async def health() -> Response[bytes]:
    return Response(encode(Health(status="ok")), media_type="application/json")


@get("/ready", opt={"public": True})
async def ready(state: State) -> Response[bytes]:
    served = served_model(state)
    info = served.engine.model_info
    return Response(encode(Ready(status="ready", model=info.id, engine=served.engine.stats(), kernels=info.kernels)),
                    media_type="application/json")
