"""The two-call reasoning budget (chat/reasoning_calls.py) against a scripted engine: which calls it makes,
and the one engine stream it makes of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from chat.reasoning_calls import generate_with_budget
from engines.base import (
    Constraint,
    EngineError,
    EngineEvent,
    EngineRequest,
    RequestFacts,
    SamplingParams,
    ThinkingBudget,
)

STOP = 2
PROMPT = [1, 1, 1, 1, 3, 3]
CLOSE_TEXT = "</think>"
CLOSE_INSERT = "\n</think>\n\n"
CLOSE_IDS = (90, 91, 92)
CONSTRAINT = Constraint(grammar='start: "It is sunny."', key="k")

Script = Sequence[tuple[int, str]]

THINKING = [(20, "Let"), (21, " me"), (22, " think"), (23, " about"), (24, " the"), (25, " weather"), (26, "."),
            (STOP, "")]
ANSWER = [(40, "It"), (41, " is"), (42, " sunny"), (43, "."), (STOP, "")]


class ScriptedEngine:
    """One script per call, chosen by the call's request id suffix ("think0", "answer1", ...): a token per
    event; the stop token ends the call with finish "stop" (and no text), max_new_tokens with "length"."""

    thinking_budgets = False

    def __init__(self, scripts: dict[str, Script], *, refuse: Sequence[str] = (),
                 fail: dict[str, int] | None = None, cached: int = 0) -> None:
        self.scripts = scripts
        self.refuse = set(refuse)  # calls refused at admission
        self.fail = fail or {}  # call -> step at which it raises mid-stream
        self.cached = cached  # prompt tokens every call reports as cached (capped by its prompt)
        self.requests: list[EngineRequest] = []
        self.released: list[str] = []  # calls whose stream ended (finished, failed or closed)
        self.closed_early: list[str] = []  # calls whose stream was closed before it finished

    def calls(self) -> list[str]:
        return [_call(r) for r in self.requests]

    def request(self, call: str) -> EngineRequest:
        return next(r for r in self.requests if _call(r) == call)

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        if _call(req) in self.refuse:
            raise EngineError("the server is busy", status=429, code="queue_full", retry_after=1.0)
        self.requests.append(req)
        return self._events(req, self.scripts[_call(req)])

    async def _events(self, req: EngineRequest, script: Script) -> AsyncGenerator[EngineEvent, None]:
        call, done = _call(req), False
        cached = min(self.cached, len(req.prompt_ids))
        try:
            for step, (token, text) in enumerate(script):
                await asyncio.sleep(0)  # choices interleave
                if self.fail.get(call) == step:
                    done = True
                    raise EngineError("decode failed: simulated fault")
                if token in req.sampling.stop_token_ids:
                    done = True
                    yield EngineEvent(index=0, token_ids=[token], text="", finish_reason="stop",
                                      facts=RequestFacts(len(req.prompt_ids), cached))
                    return
                last = step + 1 >= req.sampling.max_new_tokens
                done = last
                yield EngineEvent(index=0, token_ids=[token], text=text, finish_reason="length" if last else None,
                                  facts=RequestFacts(len(req.prompt_ids), cached) if step == 0 or last else None)
                if last:
                    return
            raise AssertionError(f"the script of {call} ran out")
        finally:
            self.released.append(call)
            if not done:
                self.closed_early.append(call)


def _call(req: EngineRequest) -> str:
    return req.request_id.rsplit("-", 1)[1]


def request(budget: int, max_new: int, *, n: int = 1, seed: int | None = None,
            constraint: Constraint | None = CONSTRAINT) -> EngineRequest:
    return EngineRequest(
        request_id="chatcmpl-1", prompt_ids=list(PROMPT), n=n, constraint=constraint,
        sampling=SamplingParams(max_new_tokens=max_new, temperature=0.7, seed=seed, stop_token_ids=(STOP,)),
        thinking=ThinkingBudget(budget, CLOSE_TEXT, CLOSE_IDS, CLOSE_INSERT))


async def _collect(stream: AsyncGenerator[EngineEvent, None]) -> list[EngineEvent]:
    return [event async for event in stream]


def run(engine: ScriptedEngine, req: EngineRequest) -> list[EngineEvent]:
    async def body() -> list[EngineEvent]:
        return await _collect(generate_with_budget(engine, req))  # type: ignore[arg-type]

    return asyncio.run(body())


def tokens(events: Sequence[EngineEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def ids(script: Script) -> list[int]:
    return [t for t, _ in script]


def facts(events: Sequence[EngineEvent]) -> list[RequestFacts]:
    return [e.facts for e in events if e.facts is not None]


def assert_one_stream(events: Sequence[EngineEvent], index: int = 0) -> None:
    """What the pipeline expects of one choice: its index on every event, the original prompt's count on
    every event with facts (the last one has them), and exactly one finish, on the last event."""
    assert events
    assert all(e.index == index for e in events)
    assert events[-1].facts is not None
    assert all(f.prompt_tokens == len(PROMPT) for f in facts(events))
    assert all(f.cached_tokens <= len(PROMPT) for f in facts(events))
    assert [e.finish_reason is not None for e in events] == [False] * (len(events) - 1) + [True]


def forced_at(events: Sequence[EngineEvent]) -> list[int]:
    return [i for i, e in enumerate(events) if e.forced]


# -- one choice --------------------------------------------------------------------------------------------


def test_budget_reached_forces_the_close_then_answers_with_the_rest_of_the_limit() -> None:
    engine = ScriptedEngine({"think0": THINKING, "answer0": ANSWER})
    events = run(engine, request(budget=3, max_new=20))

    assert engine.calls() == ["think0", "answer0"]
    think, answer = engine.requests
    assert think.request_id == "chatcmpl-1-think0"
    assert (think.n, think.thinking, think.constraint) == (1, None, None)
    assert think.sampling.max_new_tokens == 3
    assert think.prompt_ids == PROMPT
    assert think.sampling.temperature == 0.7 and think.sampling.stop_token_ids == (STOP,)

    assert forced_at(events) == [3]  # after the three thinking tokens, once
    close = events[3]
    assert close.token_ids == list(CLOSE_IDS) and close.text == CLOSE_INSERT
    assert close.logprobs is None and close.finish_reason is None

    assert answer.request_id == "chatcmpl-1-answer0"
    assert answer.prompt_ids == PROMPT + [20, 21, 22] + list(CLOSE_IDS)
    assert answer.sampling.max_new_tokens == 20 - 3 - len(CLOSE_IDS)
    assert answer.constraint == CONSTRAINT
    assert (answer.n, answer.thinking) == (1, None)

    assert_one_stream(events)
    assert events[-1].finish_reason == "stop"
    assert tokens(events) == [20, 21, 22, *CLOSE_IDS, *ids(ANSWER)]
    assert "".join(e.text for e in events) == "Let me think" + CLOSE_INSERT + "It is sunny."
    assert sorted(engine.released) == ["answer0", "think0"] and engine.closed_early == []


@pytest.mark.parametrize("closing", [
    [(30, "</think>")],
    [(30, "</"), (31, "think>")],  # split across tokens
    [(30, " done</think>\n\n")],  # with more text in the same token
])
def test_natural_close_ends_the_first_call_early_without_forcing(closing: list[tuple[int, str]]) -> None:
    thinking = [(20, "Hmm"), (21, " fine"), *closing, (50, "answer"), (51, " in"), (52, " call one"), (STOP, "")]
    engine = ScriptedEngine({"think0": thinking, "answer0": ANSWER})
    events = run(engine, request(budget=10, max_new=20))

    generated = [20, 21, *ids(closing)]
    assert engine.calls() == ["think0", "answer0"]
    assert engine.closed_early == ["think0"]  # cut off right after the close, not read to its end
    assert forced_at(events) == []
    assert tokens(events) == generated + ids(ANSWER)
    answer = engine.request("answer0")
    assert answer.prompt_ids == PROMPT + generated
    assert answer.sampling.max_new_tokens == 20 - len(generated)
    assert answer.constraint == CONSTRAINT
    assert_one_stream(events)
    assert events[-1].finish_reason == "stop"


def test_stop_token_inside_the_reasoning_is_replaced_by_the_close() -> None:
    engine = ScriptedEngine({"think0": [(20, "Hmm"), (21, " fine"), (STOP, "")], "answer0": ANSWER})
    events = run(engine, request(budget=10, max_new=20))

    (at,) = forced_at(events)
    assert STOP not in tokens(events[:at])
    assert all(e.finish_reason is None for e in events[:at + 1])
    assert events[at].token_ids == list(CLOSE_IDS) and events[at].text == CLOSE_INSERT
    answer = engine.request("answer0")
    assert answer.prompt_ids == PROMPT + [20, 21] + list(CLOSE_IDS)
    assert answer.sampling.max_new_tokens == 20 - 2 - len(CLOSE_IDS)
    assert tokens(events) == [20, 21, *CLOSE_IDS, *ids(ANSWER)]
    assert_one_stream(events)
    assert events[-1].finish_reason == "stop"


@pytest.mark.parametrize("budget", [4, 5, 50])
def test_budget_at_least_the_limit_is_one_call(budget: int) -> None:
    engine = ScriptedEngine({"think0": THINKING})
    events = run(engine, request(budget=budget, max_new=4))

    assert engine.calls() == ["think0"]
    assert engine.requests[0].sampling.max_new_tokens == 4
    assert forced_at(events) == []
    assert tokens(events) == ids(THINKING)[:4]
    assert_one_stream(events)
    assert events[-1].finish_reason == "length"


def test_natural_close_on_the_last_token_of_the_limit_ends_it() -> None:
    engine = ScriptedEngine({"think0": [(20, "Hmm"), (30, "</think>"), (STOP, "")]})
    events = run(engine, request(budget=10, max_new=2))
    assert engine.calls() == ["think0"]
    assert tokens(events) == [20, 30]
    assert_one_stream(events)
    assert events[-1].finish_reason == "length"


def test_budget_zero_closes_first_and_admits_the_answer_call_at_once() -> None:
    engine = ScriptedEngine({"answer0": ANSWER})

    async def body() -> tuple[list[str], list[EngineEvent]]:
        stream = generate_with_budget(engine, request(budget=0, max_new=20))  # type: ignore[arg-type]
        admitted = engine.calls()  # before the first event is asked for
        return admitted, await _collect(stream)

    admitted, events = asyncio.run(body())
    assert admitted == ["answer0"]
    assert engine.calls() == ["answer0"]
    assert forced_at(events) == [0]
    assert events[0].token_ids == list(CLOSE_IDS) and events[0].text == CLOSE_INSERT
    answer = engine.requests[0]
    assert answer.prompt_ids == PROMPT + list(CLOSE_IDS)
    assert answer.sampling.max_new_tokens == 20 - len(CLOSE_IDS)
    assert answer.constraint == CONSTRAINT and answer.thinking is None
    assert tokens(events) == [*CLOSE_IDS, *ids(ANSWER)]
    assert_one_stream(events)
    assert events[-1].finish_reason == "stop"


def test_budget_zero_refused_answer_call_is_an_admission_error() -> None:
    engine = ScriptedEngine({"answer0": ANSWER}, refuse=["answer0"])

    async def body() -> None:
        generate_with_budget(engine, request(budget=0, max_new=20))  # type: ignore[arg-type]

    with pytest.raises(EngineError) as info:
        asyncio.run(body())
    assert info.value.status == 429


@pytest.mark.parametrize(("budget", "max_new"), [(2, 2 + len(CLOSE_IDS)), (0, len(CLOSE_IDS))])
def test_limit_spent_exactly_by_the_close_ends_with_length(budget: int, max_new: int) -> None:
    engine = ScriptedEngine({"think0": THINKING})
    events = run(engine, request(budget=budget, max_new=max_new))

    assert engine.calls() == (["think0"] if budget else [])
    (at,) = forced_at(events)
    assert events[at].token_ids == list(CLOSE_IDS) and events[at].text == CLOSE_INSERT
    last = events[-1]
    assert at == len(events) - 2
    assert (last.token_ids, last.text, last.finish_reason) == ([], "", "length")
    assert len(tokens(events)) == max_new
    assert_one_stream(events)


@pytest.mark.parametrize(("budget", "max_new"), [(3, 4), (3, 5), (0, 2), (0, 1)])
def test_close_that_does_not_fit_is_cut_at_the_limit(budget: int, max_new: int) -> None:
    """As when the engine inserts it: the completion never exceeds max_new_tokens."""
    engine = ScriptedEngine({"think0": THINKING})
    events = run(engine, request(budget=budget, max_new=max_new))

    assert engine.calls() == (["think0"] if budget else [])
    assert tokens(events) == ids(THINKING)[:budget] + list(CLOSE_IDS)[: max_new - budget]
    (at,) = forced_at(events)
    assert events[at].text == ""  # a partial close is no close
    assert events[-1].finish_reason == "length"
    assert_one_stream(events)


def test_answer_events_report_the_original_prompt() -> None:
    engine = ScriptedEngine({"think0": THINKING, "answer0": ANSWER}, cached=1000)
    events = run(engine, request(budget=2, max_new=20))
    answer = engine.request("answer0")
    assert len(answer.prompt_ids) > len(PROMPT)
    assert all(f.prompt_tokens == len(PROMPT) for f in facts(events))
    # The answer call's cache covers the reasoning too; only the prompt's part of it is prompt cache.
    assert max(f.cached_tokens for f in facts(events)) == len(PROMPT)


def test_consumer_closing_early_releases_the_thinking_call() -> None:
    engine = ScriptedEngine({"think0": THINKING, "answer0": ANSWER})

    async def body() -> None:
        stream = generate_with_budget(engine, request(budget=5, max_new=20))  # type: ignore[arg-type]
        first = await anext(stream)
        assert first.token_ids == [20]
        await stream.aclose()

    asyncio.run(body())
    assert engine.calls() == ["think0"]
    assert engine.closed_early == ["think0"]


def test_seed_and_sampling_are_kept_for_one_choice() -> None:
    engine = ScriptedEngine({"think0": THINKING, "answer0": ANSWER})
    run(engine, request(budget=2, max_new=20, seed=41))
    assert [r.sampling.seed for r in engine.requests] == [41, 41]
    assert all(r.sampling.temperature == 0.7 for r in engine.requests)


# -- several choices ---------------------------------------------------------------------------------------


def by_index(events: Sequence[EngineEvent]) -> dict[int, list[EngineEvent]]:
    out: dict[int, list[EngineEvent]] = {}
    for e in events:
        out.setdefault(e.index, []).append(e)
    return out


def test_two_choices_each_with_their_own_calls_and_seeds() -> None:
    engine = ScriptedEngine({
        "think0": THINKING,  # reaches the budget
        "think1": [(20, "Hmm"), (30, "</think>"), (60, "never read"), (STOP, "")],  # closes by itself
        "answer0": ANSWER,
        "answer1": [(70, "Rain"), (71, "."), (STOP, "")],
    })
    events = run(engine, request(budget=3, max_new=20, n=2, seed=7))

    assert sorted(engine.calls()) == ["answer0", "answer1", "think0", "think1"]
    assert engine.calls()[:2] == ["think0", "think1"]  # both admitted before any event
    for call, seed in (("think0", 7), ("think1", 8), ("answer0", 7), ("answer1", 8)):
        r = engine.request(call)
        assert r.sampling.seed == seed and r.n == 1 and r.thinking is None, call
    assert engine.request("think0").constraint is None and engine.request("think1").constraint is None
    assert engine.request("answer0").constraint == CONSTRAINT == engine.request("answer1").constraint
    assert engine.request("answer0").prompt_ids == PROMPT + [20, 21, 22] + list(CLOSE_IDS)
    assert engine.request("answer1").prompt_ids == PROMPT + [20, 30]
    assert engine.request("answer1").sampling.max_new_tokens == 18

    choices = by_index(events)
    assert sorted(choices) == [0, 1]
    assert tokens(choices[0]) == [20, 21, 22, *CLOSE_IDS, *ids(ANSWER)]
    assert tokens(choices[1]) == [20, 30, 70, 71, STOP]
    assert len(forced_at(choices[0])) == 1 and forced_at(choices[1]) == []
    for index, choice in choices.items():
        assert_one_stream(choice, index)
        assert choice[-1].finish_reason == "stop"
    assert engine.closed_early == ["think1"]


def test_refused_second_choice_raises_at_once() -> None:
    engine = ScriptedEngine({"think0": THINKING, "think1": THINKING}, refuse=["think1"])

    async def body() -> None:
        try:
            generate_with_budget(engine, request(budget=3, max_new=20, n=2))  # type: ignore[arg-type]
        finally:
            await asyncio.sleep(0)  # lets the release of the admitted call run

    with pytest.raises(EngineError) as info:
        asyncio.run(body())
    assert info.value.status == 429 and info.value.code == "queue_full"
    assert engine.calls() == ["think0"]  # the first choice was admitted, and never started


@pytest.mark.parametrize("n", [1, 2])
def test_error_in_the_answer_call_reaches_the_consumer(n: int) -> None:
    long_answer = [(40 + i, f" w{i}") for i in range(12)] + [(STOP, "")]
    scripts = {f"think{i}": THINKING for i in range(n)} | {f"answer{i}": long_answer for i in range(n)}
    failing = f"answer{n - 1}"
    engine = ScriptedEngine(scripts, fail={failing: 2})
    received: list[EngineEvent] = []

    async def body() -> None:
        async for event in generate_with_budget(engine, request(budget=2, max_new=30, n=n)):  # type: ignore[arg-type]
            received.append(event)

    with pytest.raises(EngineError, match="simulated fault"):
        asyncio.run(body())
    mine = by_index(received)[n - 1]
    assert len(forced_at(mine)) == 1
    assert tokens(mine) == [20, 21, *CLOSE_IDS, 40, 41]  # two answer tokens, then the fault
    assert all(e.finish_reason is None for e in received)
    assert sorted(engine.released) == sorted(engine.calls())  # every admitted call let go
