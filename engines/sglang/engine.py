"""The SGLang engine: Lodestar's pipeline in front of SGLang workers on GPUs, behind the Engine interface.

Lodestar renders the prompt (token ids; text with one placeholder per image when there are images), builds
the grammar, counts the reasoning budget; the workers sample. Everything above this line is the same code
the embedded engine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from engines.base import Constraint, EngineError, EngineEvent, EngineImage, EngineRequest, ModelInfo
from engines.sglang.images import QWEN_VL_TYPES, collapse_placeholders, prepare_qwen_vl
from engines.sglang.router import Router
from engines.sglang.wire import ReplyReader, choice_rids, generate_body
from engines.sglang.worker import Worker, WorkerUnreachable

log = logging.getLogger("lodestar.sglang")

ROUTING_KEY_HEADER = "X-SMG-Routing-Key"  # SGLang's model gateway routes on it (consistent_hashing, manual)


@dataclass(frozen=True, slots=True)
class RuntimeFacts:
    """What the workers told us about themselves at start-up."""

    model_id: str
    context_length: int
    vision: bool
    grammar_backend: str | None  # "llguidance" is the one that reads Lodestar's grammars
    strict_thinking: bool  # max_thinking_tokens is enforced (--enable-strict-thinking)
    reasoning_parser: str | None


def read_facts(url: str, fallback_id: str, *, api_key: str | None = None) -> RuntimeFacts:
    """Blocking: ask a worker what it serves (newer endpoint names first)."""
    model = fetch_json(url, ("/model_info", "/get_model_info"), api_key)
    server = fetch_json(url, ("/server_info", "/get_server_info"), api_key)
    return RuntimeFacts(
        model_id=str(model.get("served_model_name") or model.get("model_path") or fallback_id),
        context_length=int(server.get("max_context_length") or server.get("context_length") or 0),
        vision=bool(model.get("has_image_understanding")),
        grammar_backend=server.get("grammar_backend"),
        strict_thinking=bool(server.get("enable_strict_thinking")),
        reasoning_parser=model.get("reasoning_parser") or server.get("reasoning_parser"))


class SGLangEngine:
    def __init__(self, workers: list[Worker], facts: RuntimeFacts, *, tokenizer: Any, family: str,
                 model_type: str, aliases: tuple[str, ...] = (), context_length: int | None = None,
                 vocab_size: int | None = None, health_interval_s: float = 10.0,
                 on_close: Callable[[], None] | None = None) -> None:
        self.router = Router(workers)
        self.facts = facts
        self.tokenizer = tokenizer
        # SGLang counts the budget and closes the section itself only when asked to (strict thinking), and
        # then applies a grammar after the section only with a reasoning parser; else the pipeline's two
        # calls enforce the budget.
        self.thinking_budgets = facts.strict_thinking and facts.reasoning_parser is not None
        vision = facts.vision and model_type in QWEN_VL_TYPES
        if facts.vision and not vision:
            log.warning("the workers' model takes images, but Lodestar cannot count image tokens for model "
                        "type %r: images are refused", model_type)
        image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>") if vision else None
        ctx = facts.context_length or context_length or 4096
        self.model_info = ModelInfo(
            id=facts.model_id, aliases=aliases, context_length=min(ctx, context_length or ctx), vision=vision,
            family=family, created=int(time.time()), owned_by="sglang", image_token_id=image_token,
            vocab_size=vocab_size)
        self._health_interval_s = health_interval_s
        self._active: dict[str, tuple[Worker, list[str]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._closed = False
        self._on_close = on_close  # stops a launched SGLang server

    # -- Engine interface ------------------------------------------------------------------------------
    def ready(self) -> bool:
        with contextlib.suppress(RuntimeError):  # called outside the event loop: nothing to start
            self._start_monitor()
        return not self._closed and self.router.any_up()

    def stats(self) -> dict[str, int]:
        workers = self.router.workers
        return {"running": sum(w.in_flight for w in workers), "waiting": 0, "requests": len(self._active),
                "workers": len(workers), "workers_up": sum(w.up for w in workers)}

    def prepare_constraint(self, constraint: Constraint) -> None:
        if self.facts.grammar_backend != "llguidance":
            raise EngineError(
                "tool calls and response_format need the SGLang workers to run with --grammar-backend "
                f"llguidance (they run {self.facts.grammar_backend or 'an unknown backend'})", status=501,
                code="grammar_unavailable")

    def prepare_image(self, image: Any, digest: str, pixel_budget: int) -> EngineImage:
        if not self.model_info.vision:
            raise EngineError(f"the model {self.model_info.id!r} does not accept images", status=400,
                              code="image_input_not_supported")
        return prepare_qwen_vl(image, digest, pixel_budget)

    def generate(self, req: EngineRequest) -> AsyncIterator[EngineEvent]:
        if self._closed:
            raise EngineError("the engine is shutting down", status=503, code="engine_closed", retry_after=1.0)
        self._start_monitor()
        if not self.router.any_up():
            raise EngineError("no SGLang worker is answering; retry shortly", status=503,
                              code="engine_unavailable", retry_after=5.0)
        return self._events(req)

    async def abort(self, request_id: str) -> None:
        active = self._active.get(request_id)
        if active is not None:
            await active[0].abort(active[1])

    async def close(self) -> None:
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        for worker, rids in list(self._active.values()):
            await worker.abort(rids)
        for worker in self.router.workers:
            await worker.close()
        if self._on_close is not None:
            await asyncio.to_thread(self._on_close)

    # -- one request -----------------------------------------------------------------------------------
    def _body(self, req: EngineRequest) -> dict[str, Any]:
        prompt: list[int] | str = req.prompt_ids
        image_urls = [image.data for image in req.images]
        if image_urls:
            # SGLang expands images in text prompts: one placeholder each, as the template wrote it.
            placeholder = self.model_info.image_token_id
            assert placeholder is not None
            prompt = self.tokenizer.decode(collapse_placeholders(req.prompt_ids, placeholder),
                                           skip_special_tokens=False)
        budget = req.thinking.max_tokens if req.thinking is not None and self.thinking_budgets else None
        return generate_body(req, prompt=prompt, image_urls=image_urls, max_thinking_tokens=budget)

    async def _events(self, req: EngineRequest) -> AsyncIterator[EngineEvent]:
        body = self._body(req)
        headers = {ROUTING_KEY_HEADER: req.session_key} if req.session_key else {}
        rids = choice_rids(req)
        reader = ReplyReader(self.tokenizer, req.n)
        last_error: EngineError | None = None
        for worker in self.router.candidates(req.session_key):
            self._active[req.request_id] = (worker, rids)
            started = unreachable = False
            try:
                async for data in worker.generate(body, headers):
                    started = True
                    event = reader.read(data)
                    if event is not None:
                        yield event
                    if reader.done:
                        return
                raise EngineError("the SGLang worker ended the stream before the request finished",
                                  status=502, code="engine_error")
            except WorkerUnreachable as exc:
                if started:
                    raise
                unreachable, last_error = True, exc  # nothing was sent: the next worker takes it
                continue
            finally:
                self._active.pop(req.request_id, None)
                if not reader.done and not unreachable:
                    self._spawn(worker.abort(rids))  # the client left or it failed: free the GPU now
        raise last_error or EngineError("no SGLang worker is answering", status=503, code="engine_unavailable")

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- health ----------------------------------------------------------------------------------------
    def _start_monitor(self) -> None:
        if self._monitor is None and self._health_interval_s > 0:
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Probe every worker each interval: down ones come back, silent ones leave the rotation."""
        while True:
            await asyncio.sleep(self._health_interval_s)
            with contextlib.suppress(Exception):
                await asyncio.gather(*(w.check_health() for w in self.router.workers))


def fetch_json(url: str, paths: tuple[str, ...], api_key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last = ""
    for path in paths:
        response = httpx.get(url.rstrip("/") + path, headers=headers, timeout=10, trust_env=False)
        if response.status_code == 200:
            return response.json()
        last = f"GET {path}: HTTP {response.status_code}"
    raise RuntimeError(f"SGLang worker {url}: {last}")
