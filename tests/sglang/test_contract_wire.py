"""Issue 19's wire rules on the SGLang engine: a real Lodestar server in front of two stand-in workers, one
streaming cumulative output (SGLang's default), one incremental; every test runs on each. Responses are read
as raw JSON and SSE, so that a null is told apart from a missing field.

1. Streams: with include_usage exactly one chunk carries usage (the last, with empty choices) and every other
   chunk says null; without it, the finish chunk only.
2. Every logprob is a finite number: top_logprobs leave out the tokens a grammar forbids (SGLang sends their
   logprob as float32's lowest number, the stand-in too).
3. A tool call cut off by max_tokens leaves no markup in the content.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.sglang.router import Router
from sessions.manager import HEADER, engine_key, owner_of
from tests.app.test_api_fake_engine import sse_events as strict_sse_events
from tests.sglang.conftest import Deployment, deploy, stop
from tests.sglang.standin import StandIn

PROMPT = [{"role": "user", "content": "Name three colors."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WORKERS = ["cumulative", "incremental"]
_sessions = itertools.count()


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory, qwen3_engine: Any, tiny_qwen3_model: Path) -> Iterator[Deployment]:
    """The tiny Qwen3 (SmolLM2's chatml family has no tool-call format), on the same two kinds of worker; its
    first tool grammar (seconds) is paid here."""
    deployment, servers = deploy(tmp_path_factory.mktemp("wire-qwen3"), str(tiny_qwen3_model),
                                 StandIn(qwen3_engine, name="a", deterministic=True),
                                 StandIn(qwen3_engine, name="b", incremental=True, deterministic=True))
    for worker in WORKERS:
        response = post(deployment, worker, tools=[WEATHER], tool_choice="required", max_tokens=1,
                        reasoning_effort="none")
        assert response.status_code == 200, response.text
    yield deployment
    stop(deployment, servers)


class _Url:
    """What the Router reads of a worker."""

    def __init__(self, url: str) -> None:
        self.url, self.up, self.in_flight = url, True, 0


def post(deployment: Deployment, worker: str | None = None, **body: Any) -> httpx.Response:
    """POST /v1/chat/completions; with `worker`, under a new session that Lodestar routes to that worker."""
    body = {"model": "standin-model", "messages": PROMPT, "max_tokens": 8, **body}
    headers = {}
    if worker is not None:
        standin = deployment.workers[WORKERS.index(worker)]
        assert standin.incremental == (worker == "incremental")
        url = deployment.urls[WORKERS.index(worker)]
        router = Router([_Url(u) for u in deployment.urls])  # type: ignore[list-item]
        session = next(s for s in (f"wire-{next(_sessions)}" for _ in range(1000))
                       if router.candidates(engine_key(owner_of(None), s))[0].url == url)
        headers[HEADER] = session
        before = len(standin.requests)
    response = httpx.post(f"{deployment.server.base_url}/v1/chat/completions", json=body, headers=headers,
                          timeout=60)
    if worker is not None:
        assert response.status_code != 200 or len(standin.requests) == before + 1, f"not served by {worker}"
    return response


def sse_events(response: httpx.Response) -> list[Any]:
    """The stream strictly (tests/app's parser), with [DONE] once and last."""
    events = strict_sse_events(response)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events


def shape(chunk: dict[str, Any]) -> tuple[Any, ...]:
    """A chunk as its kind and choice: ("role", 0, 1...), ("content", i), ("finish", i, reason) or ("usage",)."""
    choices = chunk["choices"]
    if not choices:
        return ("usage",)
    if all(c["delta"].get("role") == "assistant" for c in choices):
        assert all(c["delta"] == {"role": "assistant", "content": ""} and c["finish_reason"] is None
                   for c in choices)
        return ("role", *(c["index"] for c in choices))
    (choice,) = choices  # after the first chunk, one choice per chunk
    if choice["finish_reason"] is not None:
        assert choice["delta"] == {}
        return ("finish", choice["index"], choice["finish_reason"])
    assert choice["delta"].get("content") and set(choice["delta"]) == {"content"}
    return ("content", choice["index"])


# -- rule 1: usage -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("worker", WORKERS)
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("options", [{"include_usage": True}, {"include_usage": False}, None],
                         ids=["include_usage", "include_usage_false", "no_stream_options"])
def test_usage_is_on_exactly_one_chunk(two_workers: Deployment, worker: str, n: int, options: dict | None):
    seeded = {"n": n, "seed": 7, "temperature": 1.0}  # n seeded choices: the same ones on every call
    whole = post(two_workers, **seeded).json()
    extra = {"stream_options": options} if options is not None else {}
    chunks = sse_events(post(two_workers, worker, stream=True, **seeded, **extra))[:-1]
    include_usage = bool(options and options["include_usage"])
    shapes = [shape(c) for c in chunks]

    # The exact sequence: one role chunk for all choices; then, per choice, its content chunks and one finish
    # chunk after which nothing more comes for it; with include_usage, the usage chunk last of all.
    assert shapes[0] == ("role", *range(n))
    if include_usage:
        assert shapes[-1] == ("usage",) and ("usage",) not in shapes[:-1]
    else:
        assert ("usage",) not in shapes
    body, body_chunks = (shapes[1:-1], chunks[1:-1]) if include_usage else (shapes[1:], chunks[1:])
    assert body[-1][0] == "finish"
    for i in range(n):
        mine = [s for s in body if s[1] == i]
        assert mine == [("content", i)] * (len(mine) - 1) + [("finish", i, whole["choices"][i]["finish_reason"])]
        assert len(mine) > 1
        content = "".join(c["choices"][0]["delta"]["content"]
                          for c, s in zip(body_chunks, body, strict=True) if s == ("content", i))
        assert content == whole["choices"][i]["message"]["content"]

    # Exactly one chunk carries usage, with the whole response's counts (the prefix cache may differ).
    carrying = [c for c in chunks if c.get("usage") is not None]
    assert len(carrying) == 1 and carrying[0] is chunks[-1]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [carrying[0]["usage"][k] for k in counts] == [whole["usage"][k] for k in counts]
    lengths = [c["finish_reason"] == "length" for c in whole["choices"]]
    assert whole["usage"]["completion_tokens"] >= 8 * sum(lengths) + (n - sum(lengths))
    if include_usage:
        assert carrying[0]["choices"] == []
        assert all("usage" in c and c["usage"] is None for c in chunks[:-1])  # null, not left out
    else:
        assert shape(carrying[0])[0] == "finish"  # the last choice's finish chunk
        assert all(c["choices"] for c in chunks)  # no extra chunk


# -- rule 2: finite logprobs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grammar_ready(two_workers: Deployment) -> Deployment:
    """The first grammar costs seconds (llguidance's tokenizer, Lodestar's schema checker): paid here, once."""
    for worker in WORKERS:
        response = post(two_workers, worker, max_tokens=1, response_format={"type": "json_object"})
        assert response.status_code == 200, response.text
    return two_workers


@pytest.mark.parametrize("worker", WORKERS)
@pytest.mark.parametrize("stream", [False, True])
def test_top_logprobs_under_a_grammar_are_finite(grammar_ready: Deployment, worker: str, stream: bool):
    """json_object: at many positions the grammar allows fewer than 20 tokens. The workers send the forbidden
    ones too (SGLang clamps their -inf to float32's lowest number); Lodestar leaves them out."""
    response = post(grammar_ready, worker, messages=[{"role": "user", "content": "Give me a JSON object with a name."}],
                    max_tokens=6, temperature=0, logprobs=True, top_logprobs=20, n=2, stream=stream,
                    response_format={"type": "json_object"}, **({"stream_options": {"include_usage": True}}
                                                              if stream else {}))
    if stream:
        chunks = sse_events(response)[:-1]
        choices, usage = [c for chunk in chunks for c in chunk["choices"]], chunks[-1]["usage"]
    else:
        assert response.status_code == 200, response.text
        choices, usage = response.json()["choices"], response.json()["usage"]
    positions = [p for c in choices for p in (c.get("logprobs") or {}).get("content") or []]
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["length", "length"]
    assert len(positions) == usage["completion_tokens"] == 2 * 6  # one entry per generated token
    shortened = 0
    for position in positions:
        assert isinstance(position["logprob"], float) and -1e4 < position["logprob"] <= 0
        tops = position["top_logprobs"]
        assert 1 <= len(tops) <= 20
        assert all(isinstance(t["logprob"], float) and -1e4 < t["logprob"] <= 0 for t in tops)
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert tops[0]["logprob"] >= position["logprob"] - 1e-6
        shortened += len(tops) < 20
    assert shortened  # the grammar allowed fewer than 20 tokens somewhere (the opening "{", at least)
    assert all(math.isfinite(p["logprob"]) for p in positions)


# -- rule 3: a tool call cut off by max_tokens ------------------------------------------------------------
@pytest.mark.parametrize("worker", WORKERS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("max_tokens", [1, 2, 6, 12])
def test_a_tool_call_cut_by_max_tokens_leaves_no_markup(qwen3: Deployment, worker: str, stream: bool,
                                                        max_tokens: int):
    """tool_choice "required": the grammar opens the call at once and max_tokens cuts it (after the marker, in
    the name, before the arguments). None of it is content, there is no call, and finish_reason is "length".
    The logprobs show what the worker did generate: the markup."""
    response = post(qwen3, worker, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                    tools=[WEATHER], tool_choice="required", max_tokens=max_tokens, temperature=0, stream=stream,
                    logprobs=True, reasoning_effort="none")
    if stream:
        chunks = sse_events(response)[:-1]
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        content = "".join(c["delta"].get("content") or "" for c in choices)
        calls = [c["delta"]["tool_calls"] for c in choices if c["delta"].get("tool_calls")]
        finish = [c["finish_reason"] for c in choices if c["finish_reason"]]
        generated = "".join(t["token"] for c in choices for t in (c.get("logprobs") or {}).get("content") or [])
        usage = chunks[-1]["usage"]
    else:
        assert response.status_code == 200, response.text
        reply = response.json()
        choice = reply["choices"][0]
        content, calls = choice["message"]["content"], choice["message"].get("tool_calls") or []
        finish, usage = [choice["finish_reason"]], reply["usage"]
        generated = "".join(t["token"] for t in choice["logprobs"]["content"])
    assert generated.startswith("<tool_call>") and usage["completion_tokens"] == max_tokens
    assert (content, calls, finish) == ("", [], ["length"])
