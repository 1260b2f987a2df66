"""GET /v1/models: the served model, its aliases, context length and whether it accepts images."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from app.routes.served import served_model
from core.replies import ModelCard, ModelList, encode


@get("/v1/models")
async def list_models(state: State) -> Response[bytes]:
    info = served_model(state).engine.model_info
    card = ModelCard(id=info.id, created=info.created, owned_by=info.owned_by, aliases=list(info.aliases),
                     context_length=info.context_length, vision=info.vision)
    return Response(encode(ModelList(data=[card])), media_type="application/json")
