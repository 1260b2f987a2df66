"""Reasoning budgets on engines that cannot insert tokens mid-generation: two calls per choice.

The first call thinks: at most `budget` new tokens, no grammar, cut short by the pipeline as soon as the
closing marker appears. The second continues from the same prefix (prompt + reasoning + the close, which
the pipeline inserts when the model did not write it), with the rest of the completion budget and the
request's grammar; an engine with a prefix cache only computes the new tokens. To the rest of the
pipeline the calls look like one engine stream, the inserted close marked `forced`, exactly as an engine
that enforces the budget itself reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace

from engines.base import Engine, EngineEvent, EngineRequest, RequestFacts, ThinkingBudget
from engines.thinking import ThinkingTracker


def generate_with_budget(engine: Engine, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
    """Like engine.generate(req) for a request with a reasoning budget; admission errors are raised now
    (those of each choice's first call: the thinking call, or with a budget of 0 the answer call)."""
    budget = req.thinking
    assert budget is not None
    firsts: list[AsyncGenerator[EngineEvent, None] | None] = [None] * req.n
    answers: list[AsyncGenerator[EngineEvent, None] | None] = [None] * req.n
    try:
        for index in range(req.n):
            if budget.max_tokens > 0:
                firsts[index] = engine.generate(_thinking_call(req, budget, index))
            elif len(budget.close_ids) < req.sampling.max_new_tokens:  # the close, then at once the answer
                answers[index] = engine.generate(_answer_call(req, index, list(budget.close_ids)))
    except BaseException:  # one choice refused: release the ones admitted
        for stream in (*firsts, *answers):
            if stream is not None:
                asyncio.ensure_future(stream.aclose())
        raise
    streams = [_choice(engine, req, index, first, answer)
               for index, (first, answer) in enumerate(zip(firsts, answers, strict=True))]
    return streams[0] if len(streams) == 1 else _merge(streams)


def _seed(req: EngineRequest, index: int) -> int | None:
    return None if req.sampling.seed is None else req.sampling.seed + index


def _thinking_call(req: EngineRequest, budget: ThinkingBudget, index: int) -> EngineRequest:
    sampling = replace(req.sampling, seed=_seed(req, index),
                       max_new_tokens=min(budget.max_tokens, req.sampling.max_new_tokens))
    return replace(req, request_id=f"{req.request_id}-think{index}", n=1, sampling=sampling, constraint=None,
                   thinking=None)


def _answer_call(req: EngineRequest, index: int, generated: list[int]) -> EngineRequest:
    """The rest of choice `index` after its reasoning: `generated` (reasoning and close) joins the prompt."""
    sampling = replace(req.sampling, seed=_seed(req, index),
                       max_new_tokens=req.sampling.max_new_tokens - len(generated),
                       min_new_tokens=max(1, req.sampling.min_new_tokens))  # an answer follows the close
    return replace(req, request_id=f"{req.request_id}-answer{index}", n=1, thinking=None,
                   prompt_ids=[*req.prompt_ids, *generated], sampling=sampling)


async def _choice(engine: Engine, req: EngineRequest, index: int, first: AsyncGenerator[EngineEvent, None] | None,
                  answer: AsyncGenerator[EngineEvent, None] | None = None) -> AsyncGenerator[EngineEvent, None]:
    """One choice: `first` is its thinking call; `answer`, its answer call when admitted beforehand."""
    budget = req.thinking
    assert budget is not None
    tracker = ThinkingTracker(budget)
    limit = req.sampling.max_new_tokens
    generated: list[int] = []
    if first is not None:
        try:
            async for event in first:
                tokens = event.token_ids
                inside = tracker.thinking
                tracker.feed(event.text)
                if event.finish_reason == "stop" and inside:  # the turn ended inside the reasoning: close it
                    tokens = [t for t in tokens if t not in req.sampling.stop_token_ids]
                    event = replace(event, token_ids=tokens, finish_reason=None)
                generated.extend(tokens)
                # "length" before the request's own limit is the budget: the answer is still to come.
                final = event.finish_reason is not None and \
                    not (event.finish_reason == "length" and len(generated) < limit)
                yield replace(event, index=index, finish_reason=event.finish_reason if final else None)
                if final:
                    return
                if tracker.answering or event.finish_reason is not None:
                    break  # the reasoning is closed (stop at the end marker) or its budget is spent
        finally:
            await first.aclose()
    if not tracker.answering:
        # Never past the request's limit: like an engine that inserts it, cut the close short (its text
        # then stays out: a partial marker is no close).
        close = list(budget.close_ids[: max(0, limit - len(generated))])
        generated.extend(close)
        yield EngineEvent(index=index, token_ids=close, forced=True,
                          text=budget.close_insert if len(close) == len(budget.close_ids) else "")
    remaining = limit - len(generated)
    if remaining <= 0:
        yield EngineEvent(index=index, token_ids=[], text="", finish_reason="length",
                          facts=RequestFacts(req.prompt_tokens))
        return
    stream = answer if answer is not None else engine.generate(_answer_call(req, index, generated))
    try:
        async for event in stream:
            # Counts of the original prompt: the answer call's prompt also holds the reasoning.
            facts = event.facts
            if facts is not None:
                facts = RequestFacts(req.prompt_tokens, min(facts.cached_tokens, req.prompt_tokens))
            yield replace(event, index=index, facts=facts)
    finally:
        await stream.aclose()


_DONE = object()


async def _merge(streams: list[AsyncGenerator[EngineEvent, None]]) -> AsyncGenerator[EngineEvent, None]:
    """The choices' streams interleaved as their events come, as one engine stream."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[EngineEvent, None]) -> None:
        try:
            async for event in stream:
                await queue.put(event)
        except Exception as exc:  # handed to the consumer
            await queue.put(exc)
        finally:
            await queue.put(_DONE)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        live = len(tasks)
        while live:
            item = await queue.get()
            if item is _DONE:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
