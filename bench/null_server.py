"""Lodestar's real HTTP stack and chat pipeline in front of an engine that costs nothing.

Used by bench/serving.py to measure what the HTTP layer adds: real tokenizer and chat template, real
validation, SSE framing and uvicorn; the engine returns its tokens at once. The app's own time per request
is also measured inside the server (ServerTimes), without the client's share.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from app.main import create_app
from chat.families import detect_family
from chat.pipeline import ServedModel
from chat.template import PromptRenderer
from core.config import build_settings
from engines.base import EngineEvent, EngineRequest, ModelInfo, RequestFacts


class NullEngine:
    def __init__(self, info: ModelInfo, token_id: int, text: str) -> None:
        self.model_info = info
        self._token_id = token_id
        self._text = text

    def generate(self, req: EngineRequest) -> AsyncIterator[EngineEvent]:
        return self._events(req)

    async def _events(self, req: EngineRequest) -> AsyncIterator[EngineEvent]:
        count = req.sampling.max_new_tokens
        for index in range(req.n):
            for i in range(count):
                last = i == count - 1
                yield EngineEvent(index=index, token_ids=[self._token_id], text=self._text,
                                  finish_reason="length" if last else None,
                                  facts=RequestFacts(len(req.prompt_ids)) if i == 0 or last else None)

    async def abort(self, request_id: str) -> None:
        return None

    def unavailable(self) -> str | None:
        return None

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0, "requests": 0}

    async def close(self) -> None:
        return None


class ServerTimes:
    """ASGI wrapper: how long the app takes per chat request, from the call (request head parsed) to the
    last body byte handed to uvicorn. GET /bench/server-times returns them (ms) and starts over."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: list[float] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/bench/server-times":
            body = json.dumps(self.times).encode()
            self.times = []
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body": body})
        start = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.times.append(1000 * (time.perf_counter() - start))

        await self.app(scope, receive, timed_send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from engines.embedded.loader import resolve_model_folder

    settings = build_settings({"port": args.port, "log_level": "warning"})
    folder, model_id, aliases = resolve_model_folder(args.model, settings.data_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    renderer = PromptRenderer(tokenizer, detect_family("llama", tokenizer.chat_template))
    token_id = tokenizer.encode(" ok", add_special_tokens=False)[0]
    info = ModelInfo(id=model_id, aliases=aliases, context_length=8192, vision=False,
                     created=int(time.time()))
    served = ServedModel(engine=NullEngine(info, token_id, tokenizer.decode([token_id])), renderer=renderer,
                         fingerprint="fp_null")
    app = ServerTimes(create_app(settings, served))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
