"""Lodestar's real HTTP stack and chat pipeline in front of an engine that costs nothing.

Used by bench/serving.py to measure what the HTTP layer adds: real tokenizer and chat template, real
validation, SSE framing and uvicorn; the engine returns its tokens at once.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator

import uvicorn

from app.main import create_app
from app.settings import build_settings
from chat.families import detect_family
from chat.pipeline import ServedModel
from chat.template import PromptRenderer
from engines.base import EngineEvent, EngineRequest, ModelInfo


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
                yield EngineEvent(index=index, token_ids=[self._token_id], text=self._text,
                                  finish_reason="length" if i == count - 1 else None,
                                  prompt_tokens=len(req.prompt_ids))

    async def abort(self, request_id: str) -> None:
        return None

    def ready(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0, "requests": 0}

    async def close(self) -> None:
        return None


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
    info = ModelInfo(id=model_id, aliases=aliases, context_length=8192, vision=False, family="chatml",
                     created=int(time.time()))
    served = ServedModel(engine=NullEngine(info, token_id, tokenizer.decode([token_id])), renderer=renderer,
                         fingerprint="fp_null")
    app = create_app(settings, served)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
