"""Reasoning budgets on the real SmolLM2-135M (fp32): closed by the scheduler mid-generation, and by the
pipeline's two-call fallback for engines that cannot insert tokens. Both give the same tokens."""

from __future__ import annotations

from typing import Any

from chat.reasoning_calls import generate_with_budget
from engines.base import EngineEvent, ThinkingBudget
from engines.embedded.engine import EmbeddedEngine
from engines.embedded.loader import LoadedModel
from tests.engines.test_scheduler import QUESTION, collect, fp32, request, run_engine, tokens_of
from tools.grammar import constraint

__all__ = ["fp32"]  # the module-scoped fixture, shared with test_scheduler

INSERT = "\n</think>\n\n"


def thinking_prompt(tokenizer: Any, question: str = QUESTION) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text + "<think>\n", add_special_tokens=False)["input_ids"]


def budgeted(tokenizer: Any, budget: int, max_new: int, n: int = 1, **kw: Any):
    close_ids = tuple(tokenizer(INSERT, add_special_tokens=False)["input_ids"])
    kw.setdefault("stop_token_ids", (tokenizer.convert_tokens_to_ids("<|im_end|>"),))
    grammar = kw.pop("constraint", None)
    req = request(thinking_prompt(tokenizer), max_new_tokens=max_new, n=n, **kw)
    req.constraint = grammar
    req.thinking = ThinkingBudget(budget, "</think>", close_ids, INSERT)
    return req, close_ids


class NoInsertEngine:
    """The embedded engine presented as one that cannot insert tokens: the pipeline makes two calls."""

    thinking_budgets = False

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine

    def generate(self, req):
        return self.engine.generate(req)


def split(events: list[EngineEvent]) -> tuple[list[int], list[int], list[int]]:
    """(sampled before the close, inserted, sampled after)."""
    first = next(i for i, e in enumerate(events) if e.forced)
    last = max(i for i, e in enumerate(events) if e.forced)
    return tokens_of(events[:first]), tokens_of(events[first:last + 1]), tokens_of(events[last + 1:])


def forced_tokens(events: list[EngineEvent]) -> list[int]:
    return [t for e in events if e.forced for t in e.token_ids]


def test_budget_closes_the_section_after_exactly_budget_tokens(fp32: LoadedModel) -> None:
    req, close_ids = budgeted(fp32.tokenizer, 4, 24)

    async def body(engine: EmbeddedEngine):
        return await collect(engine.generate(req))

    events = run_engine(fp32, body)[0]
    before, inserted, after = split(events)
    assert "</think>" not in fp32.tokenizer.decode(before)  # the model did not close it itself
    assert len(before) == 4
    assert inserted == list(close_ids)
    assert "".join(e.text for e in events if e.forced) == INSERT
    assert after, "the answer follows the inserted close"
    assert len(tokens_of(events)) <= 24
    assert all(e.logprobs is None for e in events if e.forced)


def test_budget_zero_closes_at_once(fp32: LoadedModel) -> None:
    req, close_ids = budgeted(fp32.tokenizer, 0, 12)

    async def body(engine: EmbeddedEngine):
        return await collect(engine.generate(req))

    events = run_engine(fp32, body)[0]
    assert tokens_of(events[: len(close_ids)]) == list(close_ids)
    assert all(e.forced for e in events[: len(close_ids)])
    assert not any(e.forced for e in events[len(close_ids):])


def test_stop_token_inside_the_reasoning_becomes_the_close(fp32: LoadedModel) -> None:
    free, _ = budgeted(fp32.tokenizer, 50, 6)

    async def greedy(engine: EmbeddedEngine):
        return await collect(engine.generate(free))

    plain = tokens_of(run_engine(fp32, greedy)[0])
    stop = plain[1]  # make the model's second token a stop token
    req, close_ids = budgeted(fp32.tokenizer, 50, 16, stop_token_ids=(stop,))

    async def body(engine: EmbeddedEngine):
        return await collect(engine.generate(req))

    events = run_engine(fp32, body)[0]
    assert tokens_of(events[:1]) == plain[:1]
    assert tokens_of(events[1 : 1 + len(close_ids)]) == list(close_ids)
    assert all(e.finish_reason is None for e in events[: 1 + len(close_ids)])


def test_grammar_applies_from_the_close_on(fp32: LoadedModel) -> None:
    req, _ = budgeted(fp32.tokenizer, 3, 24, constraint=constraint('start: "Yes" | "No"'))

    async def body(engine: EmbeddedEngine):
        return await collect(engine.generate(req))

    events = run_engine(fp32, body)[0]
    before, _, after = split(events)
    assert len(before) == 3 and fp32.tokenizer.decode(before).strip()  # free text while thinking
    answer = "".join(e.text for e in events[len(events) - len(after):])
    assert answer in ("Yes", "No")


def test_two_calls_give_the_same_tokens_as_inserting(fp32: LoadedModel) -> None:
    for budget, n in ((5, 1), (0, 1), (3, 2)):
        req, _ = budgeted(fp32.tokenizer, budget, 20, n=n)

        async def inserting(engine: EmbeddedEngine, req=req):
            return await collect(engine.generate(req))

        async def two_calls(engine: EmbeddedEngine, req=req):
            return await collect(generate_with_budget(NoInsertEngine(engine), req))  # type: ignore[arg-type]

        one, two = run_engine(fp32, inserting), run_engine(fp32, two_calls)
        assert sorted(one) == sorted(two) == list(range(n))
        for index in range(n):
            assert tokens_of(two[index]) == tokens_of(one[index]), (budget, n, index)
            assert forced_tokens(two[index]) == forced_tokens(one[index])
            assert two[index][-1].finish_reason == one[index][-1].finish_reason
            assert "".join(e.text for e in two[index]) == "".join(e.text for e in one[index])
