"""The responses of a planned request: engine events -> one ChatCompletion, or a stream of chunks."""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from chat.output import ChoiceDelta, ChoiceStream
from chat.pipeline import Plan, Reply, ServedModel
from chat.reasoning import ReasoningSplitter
from chat.reasoning_calls import generate_with_budget
from chat.sessions import reply_message
from core.protocol import FunctionCall, ToolCall
from core.replies import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCallDelta,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprobOut,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from engines.base import EngineEvent, TokenLogprob
from tools.calls import ParsedCall, ToolCallParser


@dataclass(slots=True)
class ChoiceOutput:
    """Everything one choice's output owns while its events flow."""

    text: ChoiceStream  # stop strings, held-back text, logprobs as their text is released, the finish
    splitter: ReasoningSplitter | None  # reasoning split off first (models that reason)
    parser: ToolCallParser | None  # then content and tool calls (requests with tools)
    generated: int = 0  # tokens, reasoning included
    pieces: list[str | ParsedCall] = field(default_factory=list)  # content and calls released so far

    @property
    def index(self) -> int:
        return self.text.index

    @property
    def finished(self) -> bool:
        return self.text.finished


class Run:
    """The state of one request while its events flow: one ChoiceOutput per choice."""

    def __init__(self, plan: Plan, served: ServedModel) -> None:
        self.plan = plan
        self.served = served
        stop_ids = plan.engine_request.sampling.stop_token_ids
        syntax = plan.reasoning.syntax if plan.reasoning else None
        self.outputs = [ChoiceOutput(ChoiceStream(i, plan.stops, plan.logprobs, stop_ids),
                                     ReasoningSplitter(syntax.open, syntax.close) if syntax else None,
                                     plan.tools.parser())
                        for i in range(plan.engine_request.n)]
        self.first_ids: list[int] = []  # choice 0's tokens, for sessions
        self.prompt_tokens = plan.engine_request.prompt_tokens
        self.cached_tokens = 0
        self.started = time.perf_counter()
        self.queued_s: float | None = None  # the wait for a batch slot, if the engine said
        self.token_gaps = array("d")  # seconds to the first token event, then between token events
        engine, req = served.engine, plan.engine_request
        if req.thinking is not None and not engine.thinking_budgets:
            self._stream = generate_with_budget(engine, req)  # raises now if not admitted
        else:
            self._stream = engine.generate(req)

    async def events(self) -> AsyncIterator[tuple[ChoiceOutput, EngineEvent]]:
        stream, gaps = self._stream, self.token_gaps
        last = self.started
        try:
            async for event in stream:
                facts = event.facts
                if facts is not None:
                    self.prompt_tokens = facts.prompt_tokens or self.prompt_tokens
                    self.cached_tokens = max(self.cached_tokens, facts.cached_tokens)
                    if self.queued_s is None:
                        self.queued_s = facts.queued_s
                if event.token_ids:
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
                yield self.outputs[event.index], event
                if all(out.finished for out in self.outputs):
                    break
        finally:
            await stream.aclose()  # stops the engine's work for a request that ends early

    def process(self, out: ChoiceOutput, event: EngineEvent) -> tuple[str, ChoiceDelta, list[str | ParsedCall]]:
        """Feed one event to its choice: reasoning is split off first, then the answer goes through stop
        strings and, with tools, is split into content and calls."""
        if not out.finished:  # a choice ended by a stop string ignores what its engine still sends
            out.generated += len(event.token_ids)
            if out.index == 0:
                self.first_ids.extend(event.token_ids)
        reasoning = ""
        if out.splitter is not None and not out.finished:
            reasoning, event = out.splitter.feed(event)
            if self.plan.reasoning is not None and self.plan.reasoning.exclude:
                reasoning = ""
        delta = out.text.feed(event)
        parser = out.parser
        if parser is None:
            return reasoning, delta, []
        pieces = parser.feed(delta.text)
        if parser.repeated and delta.finish_reason is None:
            delta.finish_reason = out.text.end("stop").finish_reason
        if delta.finish_reason is not None:
            pieces += parser.finish(truncated=delta.finish_reason == "length")
        out.pieces.extend(pieces)
        return reasoning, delta, pieces

    def answer(self, out: ChoiceOutput) -> tuple[str | None, list[ParsedCall]]:
        """A choice's content and tool calls, as far as they were released."""
        calls = [p for p in out.pieces if isinstance(p, ParsedCall)]
        if out.parser is None:
            return out.text.full_text, calls
        return "".join(p for p in out.pieces if isinstance(p, str)) or (None if calls else ""), calls

    @property
    def done(self) -> bool:
        """Every choice has finished: the reply is final (its last chunks may still be on their way)."""
        return all(out.finished for out in self.outputs)

    def reply(self) -> Reply | None:
        """Choice 0 as far as the client received it, for a session's transcript; None before its first token."""
        first = self.outputs[0]
        if not first.generated:
            return None
        content, calls = self.answer(first)
        splitter = first.splitter
        message = reply_message(content, splitter.text if splitter else None,
                                [(c.id, c.name, c.arguments) for c in calls])
        return Reply(message, [*self.plan.engine_request.prompt_ids, *self.first_ids], self.usage())

    def reasoning_content(self, out: ChoiceOutput) -> str | None:
        splitter = out.splitter
        if splitter is None or (self.plan.reasoning is not None and self.plan.reasoning.exclude):
            return None
        return splitter.text

    def usage(self) -> Usage:
        completion = sum(out.generated for out in self.outputs)
        reasoning = sum(out.splitter.reasoning_tokens for out in self.outputs if out.splitter is not None)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                     total_tokens=self.prompt_tokens + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
                     completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning))

    def confidence_score(self) -> float | None:
        """100 x the geometric mean of the sampled tokens' probabilities, over all choices."""
        if not self.plan.confidence:
            return None
        values = [lp for out in self.outputs for lp in out.text.all_logprobs]
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
                # A token the grammar (or a held-back stop) forbids has logprob -inf: it could not be
                # generated, so it is not an alternative, and JSON has no -inf (it became null).
                top_logprobs=[TopLogprob(token=texts.token_str(t), logprob=lp, bytes=list(texts.token_bytes(t)))
                              for t, lp in e.top if lp > -math.inf])
            for e in entries])


async def complete(run: Run) -> ChatCompletion:
    plan, served = run.plan, run.served
    async for out, event in run.events():
        run.process(out, event)
    choices = []
    for out in run.outputs:
        content, calls = run.answer(out)
        message = ResponseMessage(role="assistant", content=content,
                                  reasoning_content=run.reasoning_content(out), tool_calls=[
            ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
            for call in calls] or None)
        choices.append(Choice(index=out.index, message=message, logprobs=run.logprobs_out(out.text.logprobs),
                              finish_reason=_finish_reason(out.text.finish_reason, calls)))
    return ChatCompletion(
        id=plan.request_id, object="chat.completion", created=plan.created, model=plan.model,
        system_fingerprint=served.fingerprint, choices=choices, usage=run.usage(),
        confidence_score=run.confidence_score())


def _finish_reason(reason: str | None, calls: list[ParsedCall]) -> str | None:
    return "tool_calls" if calls and reason == "stop" else reason


async def stream(run: Run) -> AsyncGenerator[list[ChatCompletionChunk], None]:
    """The run's chunks as they come, those of one engine event together (they leave in one write). From
    the first batch yielded while `run.done`, the reply is final."""
    plan, served = run.plan, run.served

    def chunk(choices: list[ChunkChoice], **extra: Any) -> ChatCompletionChunk:
        if plan.include_usage:  # OpenAI: null on every chunk but the last, so that no usage is counted twice
            extra.setdefault("usage", None)
        return ChatCompletionChunk(id=plan.request_id, object="chat.completion.chunk", created=plan.created,
                                   model=plan.model, system_fingerprint=served.fingerprint, choices=choices,
                                   **extra)

    yield [chunk([ChunkChoice(index=out.index, delta=Delta(role="assistant", content=""))
                  for out in run.outputs])]
    async for out, event in run.events():
        batch = _event_chunks(run, out, event, chunk)
        if batch:
            yield batch
    if plan.include_usage:
        yield [chunk([], usage=run.usage())]


def _event_chunks(run: Run, out: ChoiceOutput, event: EngineEvent,
                  chunk: Callable[..., ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    """The chunks one engine event gives its choice: reasoning, content or calls, then the finish."""
    reasoning, delta, pieces = run.process(out, event)
    chunks = []
    if reasoning:
        chunks.append(chunk([ChunkChoice(index=out.index, delta=Delta(reasoning_content=reasoning))]))
    parser = out.parser
    if parser is None:
        if delta.text or delta.logprobs:
            chunks.append(chunk([ChunkChoice(index=out.index, delta=Delta(content=delta.text),
                                             logprobs=run.logprobs_out(delta.logprobs))]))
    else:
        logprobs = run.logprobs_out(delta.logprobs) if delta.logprobs else None
        for piece in pieces or ([""] if logprobs else []):
            chunks.append(chunk([_piece_choice(out.index, piece, parser, logprobs)]))
            logprobs = None
        for piece in pieces:
            if isinstance(piece, ParsedCall):  # the arguments follow the call's opening delta
                chunks.append(chunk([ChunkChoice(index=out.index, delta=Delta(tool_calls=[ToolCallDelta(
                    index=parser.calls.index(piece), function=FunctionCallDelta(arguments=piece.arguments))]))]))
    if delta.finish_reason is not None:
        last = all(o.finished for o in run.outputs)
        extra: dict[str, Any] = {"confidence_score": run.confidence_score()} if last else {}
        if last and not run.plan.include_usage:  # else the usage chunk that follows carries it, alone
            extra["usage"] = run.usage()
        calls = parser.calls if parser is not None else []
        chunks.append(chunk([ChunkChoice(index=out.index, delta=Delta(),
                                         finish_reason=_finish_reason(delta.finish_reason, calls))], **extra))
    return chunks


def _piece_choice(index: int, piece: str | ParsedCall, parser: ToolCallParser,
                  logprobs: ChoiceLogprobs | None) -> ChunkChoice:
    if isinstance(piece, str):
        return ChunkChoice(index=index, delta=Delta(content=piece), logprobs=logprobs)
    # A call's first delta: index, id, type and name, with empty arguments (OpenAI's shape).
    return ChunkChoice(index=index, logprobs=logprobs, delta=Delta(tool_calls=[ToolCallDelta(
        index=parser.calls.index(piece), id=piece.id, type="function",
        function=FunctionCallDelta(name=piece.name, arguments=""))]))
