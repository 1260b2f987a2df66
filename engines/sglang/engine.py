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
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from engines.base import Constraint, EngineError, EngineEvent, EngineImage, EngineRequest, ModelInfo
from engines.sglang.images import QWEN_VL_TYPES, prepare_qwen_vl
from engines.sglang.replies import ReplyReader
from engines.sglang.router import Router
from engines.sglang.wire import choice_rids, generate_body
from engines.sglang.worker import Worker, WorkerUnreachable

log = logging.getLogger("lodestar.sglang")

ROUTING_KEY_HEADER = "X-SMG-Routing-Key"  # SGLang's model gateway routes on it (consistent_hashing, manual)


@dataclass(frozen=True, slots=True)
class RuntimeFacts:
    """What the workers told us about themselves at start-up."""

    model_id: str
    context_length: int  # the worker's --context-length; 0 when it uses the model's own (the default)
    max_input_tokens: int  # the longest prompt the worker takes (its max_req_input_len; 0: not said)
    vision: bool
    grammar_backend: str | None  # "llguidance" is the one that reads Lodestar's grammars
    strict_thinking: bool  # --enable-strict-thinking (not used: see SGLangEngine.thinking_budgets)
    deterministic: bool  # --enable-deterministic-inference: only then does sampling_seed take effect
    incremental: bool  # --incremental-streaming-output: each event holds only its new output_ids


def read_facts(url: str, fallback_id: str, *, api_key: str | None = None) -> RuntimeFacts:
    """Blocking: ask a worker what it serves (newer endpoint names first)."""
    model = fetch_json(url, ("/model_info", "/get_model_info"), api_key)
    server = fetch_json(url, ("/server_info", "/get_server_info"), api_key)
    return RuntimeFacts(
        model_id=str(model.get("served_model_name") or model.get("model_path") or fallback_id),
        context_length=int(server.get("context_length") or server.get("max_context_length") or 0),
        max_input_tokens=int(server.get("max_req_input_len") or 0),
        vision=bool(model.get("has_image_understanding")),
        grammar_backend=server.get("grammar_backend"),
        strict_thinking=bool(server.get("enable_strict_thinking")),
        deterministic=bool(server.get("enable_deterministic_inference")),
        incremental=bool(server.get("incremental_streaming_output")))


# SGLang refuses prompts longer than max_req_input_len = context - 6 (tp_worker.py: max_req_len is the
# context less one, the input limit five less than that).
_INPUT_MARGIN = 6


def context_length_of(facts: RuntimeFacts, model_context: int, setting: int | None) -> int:
    """The context the workers really serve: their --context-length, else the model's own (its config, as
    SGLang reads it), within the longest prompt they take; Lodestar's --context-length can only lower it."""
    ctx = facts.context_length or model_context
    if facts.max_input_tokens:
        ctx = min(ctx, facts.max_input_tokens + _INPUT_MARGIN)
    return min(ctx, setting) if setting else ctx


class SGLangEngine:
    def __init__(self, workers: list[Worker], facts: RuntimeFacts, *, tokenizer: Any,
                 model_type: str, model_context: int, aliases: tuple[str, ...] = (),
                 context_length: int | None = None, vocab_size: int | None = None, health_interval_s: float = 10.0,
                 on_close: Callable[[], None] | None = None) -> None:
        self.router = Router(workers)
        self.facts = facts
        self.tokenizer = tokenizer
        # Reasoning budgets are always the pipeline's two calls: SGLang's own (max_thinking_tokens under
        # --enable-strict-thinking) needs a grammar backend that filters tokens, which llguidance, the one
        # Lodestar's grammars need, does not; SGLang then refuses to start or ignores the budget
        # (constrained/reasoner_grammar_backend.py).
        self.thinking_budgets = False
        if facts.strict_thinking:
            log.info("the workers run --enable-strict-thinking; reasoning budgets are still Lodestar's two calls")
        self._seed_warned = facts.deterministic  # warn once when a seed cannot be honoured
        vision = facts.vision and model_type in QWEN_VL_TYPES
        if facts.vision and not vision:
            log.warning("the workers' model takes images, but Lodestar cannot count image tokens for model "
                        "type %r: images are refused", model_type)
        image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>") if vision else None
        self.model_info = ModelInfo(
            id=facts.model_id, aliases=aliases, context_length=context_length_of(facts, model_context, context_length),
            vision=vision,
            created=int(time.time()), owned_by="sglang", image_token_id=image_token,
            vocab_size=vocab_size)
        self._health_interval_s = health_interval_s
        self._active: dict[str, tuple[Worker, list[str]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._closed = False
        self._on_close = on_close  # stops a launched SGLang server

    # -- Engine interface ------------------------------------------------------------------------------
    def unavailable(self) -> str | None:
        with contextlib.suppress(RuntimeError):  # called outside the event loop: nothing to start
            self._start_monitor()
        if self._closed:
            return "the engine is shutting down"
        if self.router.any_up():
            return None
        urls = ", ".join(w.url for w in self.router.workers)
        return f"no SGLang worker is answering (all out of rotation: {urls}); retry shortly"

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

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        if self._closed:
            raise EngineError("the engine is shutting down", status=503, code="engine_closed", retry_after=1.0)
        self._start_monitor()
        if not self.router.any_up():
            raise EngineError("no SGLang worker is answering; retry shortly", status=503,
                              code="engine_unavailable", retry_after=5.0)
        return self._events(req)

    def forget_session(self, session_key: str) -> None:
        """Nothing to drop: the workers' RadixAttention caches evict on their own."""

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
            # SGLang expands the images of a text prompt: its placeholders, one per image, stay as they are.
            prompt = self.tokenizer.decode(req.prompt_ids, skip_special_tokens=False)
        return generate_body(req, prompt=prompt, image_urls=image_urls)

    async def _events(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        body = self._body(req)
        headers = {ROUTING_KEY_HEADER: req.session_key} if req.session_key else {}
        rids = choice_rids(req)
        if req.sampling.seed is not None and not self._seed_warned:
            self._seed_warned = True
            log.warning("a request has a seed, but the SGLang workers run without "
                        "--enable-deterministic-inference: their sampling is not repeatable "
                        "(docs/deployment.md#what-reaches-the-workers); said once")
        # For image prompts the worker counts the text prompt's single placeholders: the count is ours.
        reader = ReplyReader(self.tokenizer, req.n, prompt_tokens=req.prompt_tokens if req.images else None)
        tried: list[str] = []
        retry_after = 5.0
        for worker in self.router.candidates(req.session_key):
            self._active[req.request_id] = (worker, rids)
            started = unreachable = False
            stream = worker.generate(body, headers)
            try:
                async for batch in stream:
                    started = True
                    events = reader.read_batch(batch)
                    if reader.done:
                        # Read on to the stream's end before the last event leaves (the caller stops
                        # there), so the connection goes back to the pool instead of being dropped.
                        await _drain(stream)
                    for event in events:
                        yield event
                    if reader.failure is not None:
                        raise reader.failure
                    if reader.done:
                        return
                raise EngineError("the SGLang worker ended the stream before the request finished",
                                  status=502, code="engine_error")
            except WorkerUnreachable as exc:
                if started:
                    raise
                unreachable = True  # nothing was sent: the next worker takes it
                tried.append(worker.url)
                retry_after = exc.retry_after or retry_after
                continue
            finally:
                self._active.pop(req.request_id, None)
                if not reader.done and not unreachable:
                    self._spawn(worker.abort(rids))  # the client left or it failed: free the GPU now
        raise EngineError(f"no SGLang worker is answering (tried {', '.join(tried)}); retry shortly", status=503,
                          code="engine_unavailable", retry_after=retry_after)

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


async def _drain(stream: AsyncGenerator[list[bytes], None], timeout_s: float = 1.0) -> None:
    """What follows the last choice's finish: only `data: [DONE]`, sent at once (bounded all the same)."""
    with contextlib.suppress(TimeoutError, EngineError):
        async with asyncio.timeout(timeout_s):
            async for _ in stream:
                pass


def fetch_json(url: str, paths: tuple[str, ...], api_key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last = ""
    for path in paths:
        response = httpx.get(url.rstrip("/") + path, headers=headers, timeout=10, trust_env=False)
        if response.status_code == 200:
            return response.json()
        last = f"GET {path}: HTTP {response.status_code}"
    raise RuntimeError(f"SGLang worker {url}: {last}")
