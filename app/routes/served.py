"""The served model of a request's app, or the 503 that says why there is none to serve it."""

from __future__ import annotations

from litestar.datastructures import State

from chat.pipeline import ServedModel
from core.errors import APIError


def served_model(state: State) -> ServedModel:
    served = state.get("served")
    reason = served.engine.unavailable() if served is not None else None
    if reason is not None:  # loaded, but it cannot serve now (its workers do not answer)
        raise APIError(503, f"The engine is unavailable: {reason}", code="engine_unavailable",
                       headers={"Retry-After": "5"})
    if served is None:
        error = state.get("load_error")
        detail = f": loading failed: {error}" if error else ": the model is still loading"
        raise APIError(503, f"The engine is not ready{detail}", code="engine_not_ready",
                       headers={"Retry-After": "5"})
    return served
