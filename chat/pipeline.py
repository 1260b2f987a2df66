"""The chat pipeline: a validated request -> an engine request -> OpenAI responses or chunks."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from chat.images import check_placeholders, collect_images, prepare_images, refuse_placeholder_text
from chat.reasoning import ReasoningMode, ReasoningSyntax, decide
from chat.sessions import SessionTurn, continue_prompt
from chat.template import PromptRenderer
from chat.tokens import TokenTexts
from chat.truncate import truncate
from chat.validation import logit_bias
from core.errors import APIError
from core.protocol import ChatCompletionRequest, Message
from core.replies import Usage
from core.settings import Settings
from engines.base import Engine, EngineError, EngineRequest, SamplingParams, prompt_size
from multimodal.loader import ImageLoader
from tools.checker import GrammarChecker
from tools.request import ToolPlan, plan_tools

# Rendering a very long conversation (jinja + tokenizer) is moved off the event loop.
_INLINE_RENDER_CHARS = 20_000


@dataclass(slots=True)
class ServedModel:
    """What the HTTP layer needs to serve one model: its engine and its prompt renderer."""

    engine: Engine
    renderer: PromptRenderer
    fingerprint: str
    images: ImageLoader | None = None  # vision models only
    reasoning: ReasoningSyntax | None = None  # models that reason (natively, or prompted by the deployment)
    token_texts: TokenTexts = field(init=False)

    def __post_init__(self) -> None:
        self.token_texts = TokenTexts(self.renderer.tokenizer)


@dataclass(frozen=True, slots=True)
class Plan:
    request_id: str
    created: int
    model: str
    engine_request: EngineRequest
    stops: list[str]
    stream: bool
    include_usage: bool
    logprobs: bool
    confidence: bool
    tools: ToolPlan = field(default_factory=ToolPlan)
    reasoning: ReasoningMode | None = None  # set when the output starts inside a reasoning section


@dataclass(slots=True)
class Reply:
    """Choice 0 as the client received it, for the session transcript."""

    message: dict[str, Any]
    token_ids: list[int]  # the prompt, then every token generated for choice 0
    usage: Usage


async def checked_tools(req: ChatCompletionRequest, settings: Settings, served: ServedModel,
                        checker: GrammarChecker) -> ToolPlan:
    """The tools stage, its grammar compiled by the engine: every tools or schema error is raised here."""
    if not (req.tools or req.response_format or req.tool_choice):
        return ToolPlan()
    cancelled = threading.Event()  # a client that leaves stops its schema checks (tools/checker.py)
    try:
        tools = await asyncio.to_thread(
            functools.partial(plan_tools, req, settings.tools, served.renderer, checker, cancelled,
                              model_hides_tools=served.engine.model_info.hides_tools_after_results))
    except asyncio.CancelledError:
        cancelled.set()
        raise
    if tools.constraint is not None:
        try:
            await asyncio.to_thread(served.engine.prepare_constraint, tools.constraint)
        except EngineError as exc:
            raise exc.as_api_error(param="tools" if req.tools else "response_format") from None
    return tools


async def checked_stages(req: ChatCompletionRequest, settings: Settings, served: ServedModel,
                         checker: GrammarChecker) -> tuple[ToolPlan, ReasoningMode | None]:
    """The stages that can refuse a request before anything is fetched or generated: tools and schemas
    (their grammar compiled), then the reasoning fields. The chat route and /v1/playground/check both run
    exactly these (after validate_request)."""
    tools = await checked_tools(req, settings, served, checker)
    return tools, decide(req, served.reasoning, settings.reasoning)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent a request: facts of the route that the plan carries to the engine."""

    tenant: str | None = None  # the key's digest: the engine shares its batch fairly between keys
    session_key: str | None = None  # a routing hint (SGLang): the same session, the same worker and cache


async def plan_request(req: ChatCompletionRequest, settings: Settings, served: ServedModel,
                       model_id: str, checker: GrammarChecker, session: SessionTurn | None = None,
                       origin: Origin | None = None) -> Plan:
    """The request as the engine and the response stages need it; the plan does not change afterwards."""
    origin = origin or Origin()
    renderer = served.renderer
    info = served.engine.model_info
    tools, reasoning = await checked_stages(req, settings, served, checker)
    messages = session.messages if session is not None else req.messages
    truncate_to = req.prompt_truncate_len or settings.requests.prompt_truncate_len
    truncated = False
    if truncate_to:
        def count(msgs: list[Message]) -> int:
            return len(renderer.render(msgs, tools.template_tools) if tools.template_tools else renderer.render(msgs))

        kept = await asyncio.to_thread(truncate, messages, truncate_to, count)
        truncated, messages = len(kept) < len(messages), kept
    refs = collect_images(messages)
    images = []
    if refs:
        assert served.images is not None  # validation refused images for a model without vision
        refuse_placeholder_text(messages, renderer.family.image_placeholders)
        images = await prepare_images(refs, settings.images, served.images, served.engine)

    # A session that continues its stored conversation is rendered from its exact token ids (not for
    # vision prompts: their images are fetched and counted again each turn).
    history = session.history if session is not None and settings.sessions.continuation == "exact" and \
        info.image_token_id is None and not truncated else []

    def render() -> list[int]:
        return _render(renderer, messages, tools.template_tools, reasoning, session if history else None)

    size = sum(len(m.content) if isinstance(m.content, str) else 1 for m in messages)
    prompt_ids = await asyncio.to_thread(render) if size > _INLINE_RENDER_CHARS or tools.template_tools or \
        history else render()
    if info.image_token_id is not None:
        check_placeholders(prompt_ids, info.image_token_id, images)
    max_new = _completion_budget(req, settings, info.context_length, prompt_size(prompt_ids, images))
    stops = req.stop_strings()
    sampling = _sampling(req, settings, served, tools, max_new,
                         stops=tuple(stops) if reasoning is None or not reasoning.section else ())
    confidence = settings.requests.confidence_score or bool(req.logprobs)
    request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    engine_request = EngineRequest(
        request_id=request_id, prompt_ids=prompt_ids, sampling=sampling, n=req.n or 1, images=images,
        constraint=tools.constraint, thinking=reasoning.budget(max_new) if reasoning else None,
        logprobs=confidence, top_logprobs=(req.top_logprobs or 0) if req.logprobs else 0,
        session_key=origin.session_key, tenant=origin.tenant)
    if reasoning is not None and not reasoning.section:
        reasoning = None  # thinking is off and the prompt says so: the output is all answer
    return Plan(request_id=request_id, created=int(time.time()), model=model_id,
                engine_request=engine_request, stops=stops, stream=bool(req.stream),
                include_usage=bool(req.stream_options and req.stream_options.include_usage),
                logprobs=bool(req.logprobs), confidence=confidence, tools=tools, reasoning=reasoning)


def _render(renderer: PromptRenderer, messages: list[Message], tools: list[dict[str, Any]] | None,
            reasoning: ReasoningMode | None, session: SessionTurn | None) -> list[int]:
    """The prompt's token ids: the chat template, the reasoning opening, and with `session` (exact
    continuation) the stored token ids plus only the new messages' tokens."""
    if reasoning is None and session is None:
        return renderer.render(messages, tools) if tools else renderer.render(messages)
    options = reasoning.template_options if reasoning else {}
    text = renderer.render_text(messages, tools, options)
    if reasoning is not None:
        text = reasoning.finish_prompt(text)
    if session is not None:
        ids = continue_session(renderer, session, text, tools, options)
        if ids is not None:
            return ids
    return renderer.tokenize(text)


def _completion_budget(req: ChatCompletionRequest, settings: Settings, context: int, prompt_tokens: int) -> int:
    """max_new_tokens: what the request asks (or the default), within the context and max_tokens_limit."""
    requested = req.max_completion_tokens or req.max_tokens or settings.requests.default_max_tokens
    room = context - prompt_tokens
    if room < 1 or (req.max_completion_tokens or req.max_tokens or 0) > room:
        asked = f" and {requested} in the completion" if requested else ""
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, your "
                       f"messages resulted in {prompt_tokens} tokens{asked}. Please reduce the length "
                       "of the messages or of the completion.", param="messages",
                       code="context_length_exceeded")
    max_new = min(requested, room) if requested else room
    return min(max_new, settings.requests.max_tokens_limit) if settings.requests.max_tokens_limit else max_new


def _sampling(req: ChatCompletionRequest, settings: Settings, served: ServedModel, tools: ToolPlan,
              max_new: int, *, stops: tuple[str, ...]) -> SamplingParams:
    """The request's sampling parameters, the settings' defaults where it is silent."""
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=settings.requests.default_temperature if req.temperature is None else req.temperature,
        top_p=settings.requests.default_top_p if req.top_p is None else req.top_p,
        top_k=req.top_k if req.top_k and req.top_k > 0 else 0,
        min_p=req.min_p or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        seed=None if req.seed is None else req.seed & 0x7FFF_FFFF_FFFF_FFFF,
        stop_token_ids=() if req.ignore_eos else served.renderer.stop_token_ids,
        ignore_eos=bool(req.ignore_eos),
        stop=stops,
        logit_bias=logit_bias(req.logit_bias, settings.requests.max_logit_bias, served.engine.model_info.vocab_size),
        # after a complete tool call, a reply the model would as soon end does end (docs/tools.md)
        end_after_ids=(tools.close_token,) if tools.close_token is not None and tools.constraint else (),
        end_probability=settings.tools.tool_call_end_probability,
    )


def continue_session(renderer: PromptRenderer, session: SessionTurn, text: str,
                     tools: list[dict[str, Any]] | None, options: dict[str, Any]) -> list[int] | None:
    """The turn's prompt as the session's stored token ids plus only the new messages' tokens."""
    try:
        history_text = renderer.render_text(session.history, tools, options, add_generation_prompt=False)
    except APIError:  # a template that cannot render the history on its own: render the whole turn
        return None
    end_of_turn = renderer.family.end_of_turn[0] if renderer.family.end_of_turn else None
    return continue_prompt(session.history_ids, history_text, text, end_of_turn, renderer.stop_token_ids,
                           renderer.tokenize)
