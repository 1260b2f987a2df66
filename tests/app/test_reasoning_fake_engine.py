"""Reasoning over HTTP with a fake engine: a prompted model (the deployment's <think> markers), an engine that
cannot insert tokens (so the pipeline's two calls enforce the budget), reasoning kept apart from the answer
and from tool-call parsing, in JSON and in SSE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from app.main import create_app
from chat.families import FAMILIES
from chat.pipeline import ServedModel
from chat.reasoning import ReasoningSyntax
from core.config import build_settings
from engines.base import EngineRequest
from tests.app.test_api_fake_engine import CHAT, assert_error, body, sse_events
from tests.fakes import DEFAULT_SCRIPT, FakeEngine, FakeRenderer, FakeTokenizer

CLOSE_INSERT = "\n</think>\n\n"
CLOSE_IDS = (5, 6, 7)  # ids the fake script and the fake prompts never use
SYNTAX = ReasoningSyntax(open="<think>", close="</think>", native=False, switch=None, close_insert=CLOSE_INSERT,
                         close_ids=CLOSE_IDS)

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
SCRIPT = ("I could call ", CALL, " maybe.", "</think>", "\n\nIt is sunny.")
REASONING = f"I could call {CALL} maybe."
ANSWER = "It is sunny."
BEFORE_CLOSE = 3  # sampled tokens before "</think>"
SCRIPT_TOKENS = len(SCRIPT) + 1  # and the end-of-turn token
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class ReasoningRenderer(FakeRenderer):
    """The fake renderer of a family with tool-call markers (not single tokens here: tools get a parser
    and no grammar); `opens`: a template that opens the reasoning section whatever the request says."""

    family = FAMILIES["qwen2"]

    def __init__(self, tokenizer: FakeTokenizer, *, opens: bool = False) -> None:
        super().__init__(tokenizer)
        self.opens = opens
        self.template_tools: list[list[dict[str, Any]] | None] = []

    def render_text(self, messages: list[Any], tools: list[dict[str, Any]] | None = None,
                    options: dict[str, Any] | None = None) -> str:
        self.template_tools.append(tools)
        text = super().render_text(messages, tools, options)
        return text + "<think>\n" if self.opens else text


def make_client(engine: FakeEngine, *, opens: bool = False, **settings: Any) -> TestClient:
    served = ServedModel(engine=engine, renderer=ReasoningRenderer(engine.tokenizer, opens=opens),  # type: ignore[arg-type]
                         fingerprint="fp_fake", reasoning=SYNTAX)
    return TestClient(create_app(build_settings(settings), served))


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine(SCRIPT, resume=True)


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with make_client(engine) as c:
        yield c


def renderer_of(client: TestClient) -> ReasoningRenderer:
    return client.app.state.served.renderer


def script_ids(engine: FakeEngine, pieces: tuple[str, ...]) -> list[int]:
    return [engine.tokenizer.id_of(p) for p in pieces]


def calls(engine: FakeEngine) -> list[str]:
    return [r.request_id.rsplit("-", 1)[1] for r in engine.requests]


def think_and_answer(engine: FakeEngine) -> tuple[EngineRequest, EngineRequest]:
    assert calls(engine) == ["think0", "answer0"]
    return engine.requests[0], engine.requests[1]


# -- reasoning and the answer ------------------------------------------------------------------------------


def test_a_call_inside_the_reasoning_is_not_a_tool_call(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json=body(reasoning={"max_tokens": 100}, tools=[WEATHER], tool_choice="auto"))
    assert r.status_code == 200, r.text
    data = r.json()
    (choice,) = data["choices"]
    message = choice["message"]
    assert "tool_calls" not in message
    assert choice["finish_reason"] == "stop"
    assert message["reasoning_content"] == REASONING
    assert message["content"] == ANSWER
    usage = data["usage"]
    assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] <= BEFORE_CLOSE
    assert usage["completion_tokens_details"]["reasoning_tokens"] == BEFORE_CLOSE  # all of them are reasoning
    assert usage["completion_tokens"] == SCRIPT_TOKENS

    # The tools reached the template, and the prompt opens the section (prompted thinking).
    renderer = renderer_of(client)
    assert [t["function"]["name"] for t in renderer.template_tools[-1] or []] == ["get_weather"]
    assert renderer.texts[-1].endswith("assistant: <think>\n")
    # Two calls: the thinking one (budget, no grammar), then the answer after the model's own close.
    think, answer = think_and_answer(engine)
    assert think.request_id == f"{data['id']}-think0"
    assert think.sampling.max_new_tokens == 100
    assert think.thinking is None and think.constraint is None and answer.thinking is None
    assert answer.prompt_ids == think.prompt_ids + script_ids(engine, SCRIPT[:4])
    assert think.request_id in engine.released  # cut off after the close
    assert usage["prompt_tokens"] == len(think.prompt_ids)


def test_without_reasoning_the_same_output_is_a_tool_call(client: TestClient, engine: FakeEngine) -> None:
    """The control of the test above: the tool-call parser does see an answer that holds the call."""
    r = client.post(CHAT, json=body(tools=[WEATHER], tool_choice="auto"))
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Rome"}
    assert choice["finish_reason"] == "tool_calls"
    assert "reasoning_content" not in choice["message"]
    assert len(engine.requests) == 1 and engine.requests[0].thinking is None


def test_exclude_keeps_the_reasoning_out_but_counts_it(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json=body(reasoning={"max_tokens": 100, "exclude": True}, tools=[WEATHER]))
    assert r.status_code == 200, r.text
    data = r.json()
    message = data["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert "tool_calls" not in message
    assert message["content"] == ANSWER
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == BEFORE_CLOSE
    think_and_answer(engine)


def test_budget_reached_forces_the_close(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json=body(reasoning={"max_tokens": 2}))
    assert r.status_code == 200, r.text
    data = r.json()
    message = data["choices"][0]["message"]
    assert message["reasoning_content"] == f"I could call {CALL}"
    # The answer call resumes the script; the model's own "</think>" is no longer a close, and is dropped.
    assert message["content"] == "maybe.\n\nIt is sunny."
    assert "<think>" not in message["content"] and "</think>" not in message["content"]
    usage = data["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2
    assert usage["completion_tokens"] == 2 + len(CLOSE_IDS) + (SCRIPT_TOKENS - 2)  # the close counts
    think, answer = think_and_answer(engine)
    assert think.sampling.max_new_tokens == 2
    assert answer.prompt_ids == think.prompt_ids + script_ids(engine, SCRIPT[:2]) + list(CLOSE_IDS)
    max_new = 512 - len(think.prompt_ids)  # no max_tokens: the rest of the context
    assert answer.sampling.max_new_tokens == max_new - 2 - len(CLOSE_IDS)


def test_effort_sets_the_budget_from_max_tokens(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json=body(reasoning_effort="low", max_tokens=50))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == ANSWER
    think, answer = think_and_answer(engine)
    assert think.sampling.max_new_tokens == 10  # 20% of 50
    assert answer.sampling.max_new_tokens == 50 - 4


def test_each_choice_thinks_in_its_own_calls(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json=body(reasoning={"max_tokens": 100}, n=2, seed=5))
    assert r.status_code == 200, r.text
    data = r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1]
    for c in data["choices"]:
        assert c["message"]["reasoning_content"] == REASONING
        assert c["message"]["content"] == ANSWER
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2 * BEFORE_CLOSE
    assert sorted(calls(engine)) == ["answer0", "answer1", "think0", "think1"]
    assert all(r.n == 1 for r in engine.requests)
    assert {r.request_id.rsplit("-", 1)[1]: r.sampling.seed for r in engine.requests} == {
        "think0": 5, "think1": 6, "answer0": 5, "answer1": 6}


# -- streaming ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [False, True])
def test_streamed_reasoning_comes_before_the_answer(client: TestClient, engine: FakeEngine, tools: bool) -> None:
    extra: dict[str, Any] = {"tools": [WEATHER], "tool_choice": "auto"} if tools else {}
    r = client.post(CHAT, json=body(reasoning={"max_tokens": 100}, stream=True,
                                    stream_options={"include_usage": True}, **extra))
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    deltas = [(i, c["choices"][0]["delta"]) for i, c in enumerate(chunks) if c["choices"]]
    reasoning_at = [i for i, d in deltas if d.get("reasoning_content")]
    content_at = [i for i, d in deltas if d.get("content")]
    assert reasoning_at and content_at
    assert max(reasoning_at) < min(content_at)
    assert all("tool_calls" not in d for _, d in deltas)
    for _, d in deltas:
        for key in ("content", "reasoning_content"):
            assert "<think>" not in d.get(key, "") and "</think>" not in d.get(key, "")
    assert "".join(d.get("reasoning_content", "") for _, d in deltas) == REASONING
    assert "".join(d.get("content", "") for _, d in deltas) == ANSWER
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count(None) == len(finishes) - 1
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens_details"]["reasoning_tokens"] == BEFORE_CLOSE
    assert usage["completion_tokens"] == SCRIPT_TOKENS
    think_and_answer(engine)


def test_streamed_exclude_sends_no_reasoning(client: TestClient) -> None:
    r = client.post(CHAT, json=body(reasoning={"max_tokens": 100, "exclude": True}, stream=True))
    chunks = sse_events(r)[:-1]
    assert all("reasoning_content" not in c["choices"][0]["delta"] for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == ANSWER
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == BEFORE_CLOSE


# -- no reasoning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {},
    {"reasoning": {"enabled": False}},
    {"reasoning_effort": "none"},
    {"reasoning": {"max_tokens": 0}},
])
def test_prompted_model_thinks_only_when_asked(fields: dict[str, Any]) -> None:
    engine = FakeEngine(DEFAULT_SCRIPT, resume=True)
    with make_client(engine) as c:
        r = c.post(CHAT, json=body(**fields))
        assert r.status_code == 200, r.text
        data = r.json()
        message = data["choices"][0]["message"]
        assert "reasoning_content" not in message
        assert message["content"] == "".join(DEFAULT_SCRIPT)
        assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
        (req,) = engine.requests  # one call, the engine's own
        assert req.request_id == data["id"] and req.thinking is None
        assert "<think>" not in renderer_of(c).texts[-1]


def test_section_opened_by_the_template_is_closed_at_once_when_thinking_is_off() -> None:
    engine = FakeEngine(DEFAULT_SCRIPT, resume=True)
    with make_client(engine, opens=True) as c:
        r = c.post(CHAT, json=body(reasoning={"enabled": False}, max_tokens=40))
        assert r.status_code == 200, r.text
        data = r.json()
    message = data["choices"][0]["message"]
    assert message.get("reasoning_content", "") == ""
    assert message["content"] == "".join(DEFAULT_SCRIPT)
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert data["usage"]["completion_tokens"] == len(CLOSE_IDS) + len(DEFAULT_SCRIPT) + 1
    (answer,) = engine.requests  # budget 0: no thinking call
    assert answer.request_id == f"{data['id']}-answer0"
    assert answer.prompt_ids[-len(CLOSE_IDS):] == list(CLOSE_IDS)
    assert answer.sampling.max_new_tokens == 40 - len(CLOSE_IDS)


@pytest.mark.parametrize("opens", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_full_queue_is_a_429_before_the_response_starts(opens: bool, stream: bool) -> None:
    """Also with a budget of 0, whose only call is the answer call."""
    engine = FakeEngine(DEFAULT_SCRIPT, resume=True)
    engine.full = True
    fields = {"reasoning": {"enabled": False}} if opens else {"reasoning": {"max_tokens": 10}}
    with make_client(engine, opens=opens) as c:
        r = c.post(CHAT, json=body(stream=stream, **fields))
    assert_error(r, 429, code="queue_full")
    assert r.headers["retry-after"] == "1"


# -- contradictions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "param"), [
    ({"reasoning": {"effort": "high"}, "reasoning_effort": "low"}, "reasoning_effort"),
    ({"reasoning": {"enabled": False, "max_tokens": 10}}, "reasoning"),
    ({"reasoning": {"enabled": True}, "reasoning_effort": "none"}, "reasoning"),
    ({"reasoning": {"max_tokens": 0, "effort": "high"}}, "reasoning"),
    ({"reasoning": {"max_tokens": -1}}, "reasoning.max_tokens"),
])
def test_contradictions_are_400(client: TestClient, engine: FakeEngine, fields: dict[str, Any],
                                param: str) -> None:
    for stream in (False, True):
        r = client.post(CHAT, json=body(stream=stream, **fields))
        assert_error(r, 400, param=param, code="invalid_reasoning", type="invalid_request_error")
    assert engine.requests == []
