"""The embedded CPU engine: transformers weights, our decoder and scheduler, behind the Engine interface."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

from core.settings import SchedulerSettings
from engines.base import Constraint, EngineError, EngineEvent, EngineImage, EngineRequest, ModelInfo
from engines.embedded.catalog import find_catalog_model
from engines.embedded.decoder import Decoder
from engines.embedded.grammar import GrammarCompiler
from engines.embedded.loader import LoadedModel
from engines.embedded.prefix_cache import PrefixCache
from engines.embedded.scheduler import Scheduler
from engines.embedded.sequence import Group
from engines.embedded.vision import QwenVision, expand_placeholders


class EmbeddedEngine:
    thinking_budgets = True  # the scheduler closes a reasoning section mid-generation (engines/thinking.py)

    def __init__(self, loaded: LoadedModel, *, scheduler: SchedulerSettings, context_length: int | None = None) -> None:
        model_config = getattr(loaded.model.config, "text_config", None) or loaded.model.config
        native = int(getattr(model_config, "max_position_embeddings", 2048))
        ctx = min(context_length, native) if context_length else native
        self.vision: QwenVision | None = None
        if loaded.vision:
            assert loaded.folder is not None
            self.vision = QwenVision(loaded.model, loaded.folder, cache_entries=scheduler.vision_cache_entries)
        decoder = Decoder(loaded.model)
        self.model_info = ModelInfo(
            id=loaded.model_id, aliases=loaded.aliases, context_length=ctx, vision=self.vision is not None,
            created=int(time.time()),
            image_token_id=self.vision.image_token_id if self.vision else None, vocab_size=decoder.vocab_size,
            hides_tools_after_results=bool((entry := find_catalog_model(loaded.model_id))
                                           and entry.hides_tools_after_results),
            kernels=loaded.kernels.describe() if loaded.kernels is not None else None)
        self.tokenizer: Any = loaded.tokenizer
        self.max_queue = scheduler.max_queue
        self.grammars = GrammarCompiler(loaded.tokenizer, decoder.vocab_size, scheduler.grammar_cache_entries)
        self.prefix_cache = PrefixCache(scheduler.prefix_cache_bytes)
        self._scheduler = Scheduler(decoder, loaded.tokenizer, ctx, scheduler, self.vision, self.grammars,
                                    self.prefix_cache)
        self._groups: dict[str, Group] = {}
        self._closed = False
        self._scheduler.start()

    def unavailable(self) -> str | None:
        return None

    def stats(self) -> dict[str, int]:
        figures = {"running": self._scheduler.batch_size, "waiting": self._scheduler.waiting_count(),
                   "requests": len(self._groups), "decode_steps": self._scheduler.decode_steps,
                   "lookup_drafted_tokens": self._scheduler.drafted_tokens,
                   "lookup_kept_tokens": self._scheduler.kept_tokens}
        if self.vision is not None:
            figures.update(self.vision.stats())
        figures.update(self.grammars.stats())
        figures.update(self.prefix_cache.stats())
        return figures

    def forget_session(self, session_key: str) -> None:
        """The session was deleted or expired: its cached prefixes lose their preference."""
        self._scheduler.call_soon(lambda: self.prefix_cache.forget_session(session_key))

    def prepare_constraint(self, constraint: Constraint) -> None:
        """Blocking (call it off the event loop): compile the grammar now, not in the scheduler thread."""
        try:
            self.grammars.compile(constraint)
        except ValueError as exc:
            raise EngineError(f"The request's schemas are too complex to enforce: {exc}", status=400,
                              code="grammar_too_complex") from None

    def prepare_image(self, image: Any, digest: str, pixel_budget: int) -> EngineImage:
        """Blocking (call it off the event loop): a decoded RGB image -> what the model's prompt takes."""
        if self.vision is None:
            raise EngineError(f"the model {self.model_info.id!r} does not accept images", status=400,
                              code="image_input_not_supported")
        return self.vision.prepare(image, digest, pixel_budget)

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Admission is decided here, eagerly, so a full queue is an error before any response starts."""
        if self._closed:
            raise _closed_error()
        if self._scheduler.waiting_count() >= self.max_queue:
            raise EngineError("the server is busy: the request queue is full; retry shortly",
                              status=429, code="queue_full", retry_after=1.0)
        if req.images:
            req = replace(req, prompt_ids=self._expanded(req))
        return self._events(req)

    def _expanded(self, req: EngineRequest) -> list[int]:
        """The prompt with each image's placeholder repeated as many times as the image takes tokens."""
        if self.vision is None:
            raise EngineError(f"the model {self.model_info.id!r} does not accept images", status=400,
                              code="image_input_not_supported")
        try:
            return expand_placeholders(req.prompt_ids, self.vision.image_token_id, req.images)
        except ValueError as exc:
            raise EngineError(str(exc), status=400, code="invalid_image_placeholder") from None

    async def _events(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[EngineEvent | BaseException] = asyncio.Queue()

        def emit(item: EngineEvent | BaseException) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        if self._closed:  # closed between generate() and the first iteration: nothing would ever answer
            raise _closed_error()
        group = Group(req=req, emit=emit, enqueued_at=time.monotonic())
        self._groups[req.request_id] = group
        self._scheduler.submit(group)
        remaining = req.n
        try:
            while remaining:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            # A consumer that stops early (client gone, stop string matched) frees its slot at once.
            group.aborted = remaining > 0
            self._groups.pop(req.request_id, None)

    async def close(self) -> None:
        self._closed = True
        for group in list(self._groups.values()):
            group.aborted = True
            # Without the scheduler nothing else would ever reach this consumer: end its wait now.
            with contextlib.suppress(RuntimeError):  # its event loop is already gone
                group.emit(_closed_error())
        await asyncio.to_thread(self._scheduler.stop)


def _closed_error() -> EngineError:
    return EngineError("the engine is shutting down", status=503, code="engine_closed", retry_after=1.0)
