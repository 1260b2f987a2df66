"""The chat pipeline: a validated request -> an engine request -> OpenAI responses or chunks."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from app.errors import APIError
from app.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    Message,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from app.settings import Settings
from chat.images import collect_images, expand_placeholders, prepare_images
from chat.output import ChoiceDelta, ChoiceStream
from chat.reasoning import ReasoningMode, ReasoningSplitter, ReasoningSyntax, decide
from chat.reasoning_calls import generate_with_budget
from chat.sessions import SessionTurn, continue_prompt, reply_message
from chat.template import PromptRenderer
from chat.tokens import TokenTexts
from chat.truncate import truncate
from engines.base import Engine, EngineError, EngineEvent, EngineRequest, SamplingParams, TokenLogprob
from multimodal.loader import ImageLoader
from tools.calls import ParsedCall, ToolCallParser
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


@dataclass(slots=True)
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
    # Called once the response is complete or the stream ends (sessions store the turn here).
    on_finish: Callable[[Reply], Awaitable[None]] | None = None


@dataclass(slots=True)
class Reply:
    """Choice 0 as the client received it, for the session transcript."""

    message: dict[str, Any]
    token_ids: list[int]  # the prompt, then every token generated for choice 0
    usage: Usage


async def plan_request(req: ChatCompletionRequest, settings: Settings, served: ServedModel,
                       model_id: str, session: SessionTurn | None = None) -> Plan:
    renderer = served.renderer
    info = served.engine.model_info
    tools = ToolPlan()
    if req.tools or req.response_format or req.tool_choice:  # schema checks can be heavy: off the loop
        tools = await asyncio.to_thread(plan_tools, req, settings, renderer)
        if tools.constraint is not None:
            try:
                await asyncio.to_thread(served.engine.prepare_constraint, tools.constraint)
            except EngineError as exc:
                raise APIError(exc.status, str(exc), param="tools" if req.tools else "response_format",
                               code=exc.code) from None
    messages = session.messages if session is not None else req.messages
    truncate_to = req.prompt_truncate_len or settings.prompt_truncate_len
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
        images = await prepare_images(refs, settings, served.images, served.engine)
    reasoning = decide(req, served.reasoning, settings)

    # A session that continues its stored conversation is rendered from its exact token ids (not for
    # vision prompts, whose image tokens are expanded after rendering).
    history = session.history if session is not None and settings.session_continuation == "exact" and \
        info.image_token_id is None and not truncated else []

    def render() -> list[int]:
        if reasoning is None and not history:
            return renderer.render(messages, tools.template_tools) if tools.template_tools else \
                renderer.render(messages)
        options = reasoning.template_options if reasoning else {}
        text = renderer.render_text(messages, tools.template_tools, options)
        if reasoning is not None:
            text = reasoning.finish_prompt(text)
        if history:
            assert session is not None
            ids = continue_session(renderer, session, text, tools.template_tools, options)
            if ids is not None:
                return ids
        return renderer.tokenize(text)

    size = sum(len(m.content) if isinstance(m.content, str) else 1 for m in messages)
    prompt_ids = await asyncio.to_thread(render) if size > _INLINE_RENDER_CHARS or tools.template_tools or \
        history else render()
    if info.image_token_id is not None:
        prompt_ids = expand_placeholders(prompt_ids, info.image_token_id, images)
    context = info.context_length
    requested = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    room = context - len(prompt_ids)
    if room < 1 or (req.max_completion_tokens or req.max_tokens or 0) > room:
        asked = f" and {requested} in the completion" if requested else ""
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, your "
                       f"messages resulted in {len(prompt_ids)} tokens{asked}. Please reduce the length "
                       "of the messages or of the completion.", param="messages",
                       code="context_length_exceeded")
    max_new = min(requested, room) if requested else room
    if settings.max_tokens_limit:
        max_new = min(max_new, settings.max_tokens_limit)
    top_k = req.top_k if req.top_k and req.top_k > 0 else 0
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    sampling = SamplingParams(
        max_new_tokens=max_new,
        temperature=settings.default_temperature if req.temperature is None else req.temperature,
        top_p=settings.default_top_p if req.top_p is None else req.top_p,
        top_k=top_k,
        min_p=req.min_p or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        seed=None if req.seed is None else req.seed & 0x7FFF_FFFF_FFFF_FFFF,
        stop_token_ids=() if req.ignore_eos else renderer.stop_token_ids,
        stop=tuple(stops) if reasoning is None or not reasoning.section else (),
    )
    confidence = settings.confidence_score or bool(req.logprobs)
    request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    engine_request = EngineRequest(
        request_id=request_id, prompt_ids=prompt_ids, sampling=sampling, n=req.n or 1, images=images,
        constraint=tools.constraint, thinking=reasoning.budget(max_new) if reasoning else None,
        logprobs=confidence, top_logprobs=(req.top_logprobs or 0) if req.logprobs else 0)
    if reasoning is not None and not reasoning.section:
        reasoning = None  # thinking is off and the prompt says so: the output is all answer
    return Plan(request_id=request_id, created=int(time.time()), model=model_id,
                engine_request=engine_request, stops=stops, stream=bool(req.stream),
                include_usage=bool(req.stream_options and req.stream_options.include_usage),
                logprobs=bool(req.logprobs), confidence=confidence, tools=tools, reasoning=reasoning)


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


class _Run:
    """The state of one request while its events flow: one ChoiceStream per choice."""

    def __init__(self, plan: Plan, served: ServedModel) -> None:
        self.plan = plan
        self.served = served
        stop_ids = plan.engine_request.sampling.stop_token_ids
        self.choices = [ChoiceStream(i, plan.stops, plan.logprobs, stop_ids) for i in range(plan.engine_request.n)]
        self.parsers = [plan.tools.parser() for _ in self.choices]
        syntax = plan.reasoning.syntax if plan.reasoning else None
        self.splitters = [ReasoningSplitter(syntax.open, syntax.close) if syntax else None for _ in self.choices]
        self.generated = [0 for _ in self.choices]  # tokens per choice, reasoning included
        self.first_ids: list[int] = []  # choice 0's tokens, for sessions
        self.finished = False
        self.pieces: list[list[str | ParsedCall]] = [[] for _ in self.choices]
        self.prompt_tokens = len(plan.engine_request.prompt_ids)
        self.cached_tokens = 0
        engine, req = served.engine, plan.engine_request
        if req.thinking is not None and not getattr(engine, "thinking_budgets", False):
            self._stream = generate_with_budget(engine, req)  # raises now if not admitted
        else:
            self._stream = engine.generate(req)

    async def events(self) -> AsyncIterator[tuple[ChoiceStream, EngineEvent]]:
        stream = self._stream
        try:
            async for event in stream:
                self.prompt_tokens = event.prompt_tokens or self.prompt_tokens
                self.cached_tokens = max(self.cached_tokens, event.cached_tokens)
                yield self.choices[event.index], event
                if all(c.finished for c in self.choices):
                    break
        finally:
            await stream.aclose()  # stops the engine's work for a request that ends early

    def process(self, choice: ChoiceStream, event: EngineEvent) -> tuple[str, ChoiceDelta, list[str | ParsedCall]]:
        """Feed one event to its choice: reasoning is split off first, then the answer goes through stop
        strings and, with tools, is split into content and calls."""
        if not choice.finished:  # a choice ended by a stop string ignores what its engine still sends
            self.generated[choice.index] += len(event.token_ids)
            if choice.index == 0:
                self.first_ids.extend(event.token_ids)
        splitter = self.splitters[choice.index]
        reasoning = ""
        if splitter is not None and not choice.finished:
            reasoning, event = splitter.feed(event)
            if self.plan.reasoning is not None and self.plan.reasoning.exclude:
                reasoning = ""
        delta = choice.feed(event)
        parser = self.parsers[choice.index]
        if parser is None:
            return reasoning, delta, []
        pieces = parser.feed(delta.text)
        if parser.repeated and delta.finish_reason is None:
            delta.finish_reason = choice.end("stop").finish_reason
        if delta.finish_reason is not None:
            pieces += parser.finish()
        self.pieces[choice.index].extend(pieces)
        return reasoning, delta, pieces

    def answer(self, index: int) -> tuple[str | None, list[ParsedCall]]:
        """A choice's content and tool calls, as far as they were released."""
        pieces = self.pieces[index]
        calls = [p for p in pieces if isinstance(p, ParsedCall)]
        if self.parsers[index] is None:
            return self.choices[index].full_text, calls
        return "".join(p for p in pieces if isinstance(p, str)) or (None if calls else ""), calls

    async def finish(self) -> None:
        """Hand choice 0's reply to the plan's on_finish, once."""
        if self.plan.on_finish is None or not self.generated[0] or self.finished:
            return
        self.finished = True
        content, calls = self.answer(0)
        splitter = self.splitters[0]
        message = reply_message(content, splitter.text if splitter else None,
                                [(c.id, c.name, c.arguments) for c in calls])
        await self.plan.on_finish(Reply(message, [*self.plan.engine_request.prompt_ids, *self.first_ids],
                                        self.usage()))

    def reasoning_content(self, index: int) -> str | None:
        splitter = self.splitters[index]
        if splitter is None or (self.plan.reasoning is not None and self.plan.reasoning.exclude):
            return None
        return splitter.text

    def usage(self) -> Usage:
        completion = sum(self.generated)
        reasoning = sum(s.reasoning_tokens for s in self.splitters if s is not None)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                     total_tokens=self.prompt_tokens + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
                     completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning))

    def confidence_score(self) -> float | None:
        """100 x the geometric mean of the sampled tokens' probabilities, over all choices."""
        if not self.plan.confidence:
            return None
        values = [lp for c in self.choices for lp in c.all_logprobs]
        if not values:
            return None
        return round(100.0 * math.exp(sum(values) / len(values)), 4)

    def logprobs_out(self, entries: list[TokenLogprob]) -> ChoiceLogprobs | None:
        if not self.plan.logprobs:
            return None
        texts = self.served.token_texts
        return ChoiceLogprobs(content=[
            TokenLogprobOut(
                token=texts.token_str(e.token_id), logprob=e.logprob,
                bytes=list(texts.token_bytes(e.token_id)),
                top_logprobs=[TopLogprob(token=texts.token_str(t), logprob=lp,
                                         bytes=list(texts.token_bytes(t))) for t, lp in e.top])
            for e in entries])


async def complete(plan: Plan, served: ServedModel) -> ChatCompletion:
    run = _Run(plan, served)
    async for choice, event in run.events():
        run.process(choice, event)
    await run.finish()
    choices = []
    for c in run.choices:
        content, calls = run.answer(c.index)
        message = ResponseMessage(role="assistant", content=content,
                                  reasoning_content=run.reasoning_content(c.index), tool_calls=[
            ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
            for call in calls] or None)
        choices.append(Choice(index=c.index, message=message, logprobs=run.logprobs_out(c.logprobs),
                              finish_reason=_finish_reason(c.finish_reason, calls)))
    return ChatCompletion(
        id=plan.request_id, object="chat.completion", created=plan.created, model=plan.model,
        system_fingerprint=served.fingerprint, choices=choices, usage=run.usage(),
        confidence_score=run.confidence_score())


def _finish_reason(reason: str | None, calls: list[ParsedCall]) -> str | None:
    return "tool_calls" if calls and reason == "stop" else reason


def stream(plan: Plan, served: ServedModel) -> AsyncIterator[ChatCompletionChunk]:
    """Admit the request now (raising EngineError if refused); return its chunks as they come."""
    return _chunks(_Run(plan, served))


async def _chunks(run: _Run) -> AsyncIterator[ChatCompletionChunk]:
    plan, served = run.plan, run.served

    def chunk(choices: list[ChunkChoice], **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=plan.request_id, object="chat.completion.chunk", created=plan.created,
                                   model=plan.model, system_fingerprint=served.fingerprint, choices=choices,
                                   **extra)

    yield chunk([ChunkChoice(index=c.index, delta=Delta(role="assistant", content=""))
                 for c in run.choices])
    try:
        async for chunk_out in _event_chunks(run, chunk):
            yield chunk_out
    finally:  # also when the client went away: what was sent is stored, even while being cancelled
        with anyio.CancelScope(shield=True):
            await run.finish()
    if plan.include_usage:
        yield chunk([], usage=run.usage())


async def _event_chunks(run: _Run, chunk: Callable[..., ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    async for choice, event in run.events():
        reasoning, delta, pieces = run.process(choice, event)
        if reasoning:
            yield chunk([ChunkChoice(index=choice.index, delta=Delta(reasoning_content=reasoning))])
        parser = run.parsers[choice.index]
        if parser is None:
            if delta.text or delta.logprobs:
                yield chunk([ChunkChoice(index=choice.index, delta=Delta(content=delta.text),
                                         logprobs=run.logprobs_out(delta.logprobs))])
        else:
            logprobs = run.logprobs_out(delta.logprobs) if delta.logprobs else None
            for piece in pieces or ([""] if logprobs else []):
                yield chunk([_piece_choice(choice.index, piece, parser, logprobs)])
                logprobs = None
            for piece in pieces:
                if isinstance(piece, ParsedCall):  # the arguments follow the call's opening delta
                    yield chunk([ChunkChoice(index=choice.index, delta=Delta(tool_calls=[ToolCallDelta(
                        index=parser.calls.index(piece), function=FunctionCallDelta(arguments=piece.arguments))]))])
        if delta.finish_reason is not None:
            last = all(c.finished for c in run.choices)
            extra = {"usage": run.usage(), "confidence_score": run.confidence_score()} if last else {}
            if last:  # stored before the client sees the end, so a reply it got is never missing
                await run.finish()
            calls = parser.calls if parser is not None else []
            yield chunk([ChunkChoice(index=choice.index, delta=Delta(),
                                     finish_reason=_finish_reason(delta.finish_reason, calls))], **extra)


def _piece_choice(index: int, piece: str | ParsedCall, parser: ToolCallParser,
                  logprobs: ChoiceLogprobs | None) -> ChunkChoice:
    if isinstance(piece, str):
        return ChunkChoice(index=index, delta=Delta(content=piece), logprobs=logprobs)
    # A call's first delta: index, id, type and name, with empty arguments (OpenAI's shape).
    return ChunkChoice(index=index, logprobs=logprobs, delta=Delta(tool_calls=[ToolCallDelta(
        index=parser.calls.index(piece), id=piece.id, type="function",
        function=FunctionCallDelta(name=piece.name, arguments=""))]))
