"""The HTTP surface end to end with a fake engine: errors, auth, limits, SSE and response shapes."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.main import create_app
from chat.pipeline import ServedModel
from core.config import build_settings
from core.settings import Settings
from engines.base import EngineEvent, EngineRequest, RequestFacts
from tests.fakes import DEFAULT_SCRIPT, EOS_ID, FakeEngine, FakeRenderer

CHAT = "/v1/chat/completions"
CHAT_V3 = "/api/v3/inference/chat/completions"
FULL_TEXT = "".join(DEFAULT_SCRIPT)  # "Hello, world! How are you?"
SCRIPT_TOKENS = len(DEFAULT_SCRIPT) + 1  # the scripted pieces and the end-of-turn token
USER = [{"role": "user", "content": "Say hello"}]


def served(engine: FakeEngine) -> ServedModel:
    return ServedModel(engine=engine, renderer=FakeRenderer(engine.tokenizer),  # type: ignore[arg-type]
                       fingerprint="fp_fake")


def make_app(engine: FakeEngine | None = None, **settings: Any) -> Litestar:
    """An app on the fake engine; its sessions and usage database is a fresh file unless one is given."""
    settings.setdefault("sessions_path", str(Path(tempfile.mkdtemp(prefix="lodestar-app-")) / "db.sqlite3"))
    return create_app(build_settings(settings), served(engine or FakeEngine()))


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(make_app(engine)) as c:
        yield c


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": USER, **fields}


def assert_error(r: httpx.Response, status: int, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert list(payload) == ["error"]
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if type is not None:
        assert error["type"] == type
    return error


def sse_events(r: httpx.Response) -> list[Any]:
    """Parse an SSE body strictly: every event is one `data: ` line; [DONE] is returned as the string."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    text = r.text
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


# -- request errors -----------------------------------------------------------------------------------


def test_malformed_json_is_a_400(client: TestClient) -> None:
    r = client.post(CHAT, content=b'{"model": "fake-model", "messages": [', headers={
        "content-type": "application/json"})
    assert_error(r, 400, code="invalid_json", type="invalid_request_error")


def test_missing_required_field_names_it(client: TestClient) -> None:
    code = "missing_required_parameter"
    assert_error(client.post(CHAT, json={"model": "fake-model"}), 400, param="messages", code=code)
    assert_error(client.post(CHAT, json={"messages": USER}), 400, param="model", code=code)
    assert_error(client.post(CHAT, json=body(messages=[{"content": "hi"}])), 400, param="messages[0].role",
                 code=code)
    assert_error(client.post(CHAT, json=body(messages=[{"role": "user"}])), 400,
                 param="messages[0].content", code=code)
    content = [{"type": "image_url", "image_url": {}}]
    assert_error(client.post(CHAT, json=body(messages=[{"role": "user", "content": content}])), 400,
                 param="messages[0].content[0].image_url.url", code=code)


@pytest.mark.parametrize(("field", "value", "param"), [
    ("temperature", "hot", "temperature"),
    ("top_p", [1], "top_p"),
    ("n", "two", "n"),
    ("max_tokens", 1.5, "max_tokens"),
    ("stream", "yes", "stream"),
    ("stop", 5, "stop"),
    ("logprobs", "true", "logprobs"),
    ("messages", "hello", "messages"),
    ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
])
def test_wrong_types_are_400_naming_the_field(client: TestClient, field: str, value: Any, param: str) -> None:
    error = assert_error(client.post(CHAT, json=body(**{field: value})), 400, param=param,
                         code="invalid_type", type="invalid_request_error")
    assert param.split(".")[0] in error["message"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"presence_penalty": -2.01}, "presence_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
])
def test_out_of_range_values_are_400_naming_the_param(client: TestClient, engine: FakeEngine,
                                                      fields: dict[str, Any], param: str) -> None:
    assert_error(client.post(CHAT, json=body(**fields)), 400, param=param, type="invalid_request_error")
    assert engine.requests == []  # nothing reached the engine


@pytest.mark.parametrize("fields", [
    {"temperature": 0}, {"temperature": 2}, {"top_p": 1}, {"n": 8}, {"presence_penalty": -2},
    {"frequency_penalty": 2}, {"stop": ["a", "b", "c", "d"]}, {"logprobs": True, "top_logprobs": 20},
    {"top_k": -1}, {"max_tokens": 1},
])
def test_boundary_values_are_accepted(client: TestClient, fields: dict[str, Any]) -> None:
    assert client.post(CHAT, json=body(**fields)).status_code == 200


def test_top_logprobs_requires_logprobs(client: TestClient) -> None:
    assert_error(client.post(CHAT, json=body(top_logprobs=2)), 400, param="top_logprobs")
    assert_error(client.post(CHAT, json=body(top_logprobs=2, logprobs=False)), 400, param="top_logprobs")


def test_stream_options_requires_stream(client: TestClient) -> None:
    r = client.post(CHAT, json=body(stream_options={"include_usage": True}))
    assert_error(r, 400, param="stream_options")
    r = client.post(CHAT, json=body(stream=False, stream_options={"include_usage": True}))
    assert_error(r, 400, param="stream_options")


def test_unknown_model_is_404(client: TestClient) -> None:
    error = assert_error(client.post(CHAT, json=body(model="gpt-9")), 404, param="model",
                         code="model_not_found", type="invalid_request_error")
    assert "gpt-9" in error["message"]


def test_model_alias_is_accepted_and_canonical_id_reported(client: TestClient) -> None:
    r = client.post(CHAT, json=body(model="fake"))
    assert r.status_code == 200 and r.json()["model"] == "fake-model"


def test_bad_message_name(client: TestClient) -> None:
    messages = [{"role": "user", "content": "hi", "name": "has spaces!"}]
    assert_error(client.post(CHAT, json=body(messages=messages)), 400, param="messages[0].name")
    messages = [{"role": "user", "content": "hi", "name": "x" * 65}]
    assert_error(client.post(CHAT, json=body(messages=messages)), 400, param="messages[0].name")
    messages = [{"role": "user", "content": "hi", "name": "Ada_Lovelace_1815"}]
    assert client.post(CHAT, json=body(messages=messages)).status_code == 200


def test_empty_messages(client: TestClient) -> None:
    assert_error(client.post(CHAT, json=body(messages=[])), 400, param="messages")


def test_unknown_role(client: TestClient) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "abracadabra"}]
    error = assert_error(client.post(CHAT, json=body(messages=messages)), 400, param="messages[1].role")
    assert "wizard" in error["message"]


def test_assistant_message_without_content(client: TestClient) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant"}, {"role": "user", "content": "?"}]
    assert_error(client.post(CHAT, json=body(messages=messages)), 400, param="messages[1].content")
    messages[1] = {"role": "assistant", "content": None}
    assert_error(client.post(CHAT, json=body(messages=messages)), 400, param="messages[1].content")


def test_every_role_is_accepted(client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "really brief"}]},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]
    assert client.post(CHAT, json=body(messages=messages)).status_code == 200


def test_image_part_to_text_only_model(client: TestClient, engine: FakeEngine) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    error = assert_error(client.post(CHAT, json=body(messages=[{"role": "user", "content": content}])), 400,
                         param="messages[0].content[1]", code="image_input_not_supported")
    assert "fake-model" in error["message"]
    assert engine.requests == []


def test_unknown_content_part_type(client: TestClient) -> None:
    content = [{"type": "video", "video": "x"}]
    r = client.post(CHAT, json=body(messages=[{"role": "user", "content": content}]))
    assert_error(r, 400, param="messages[0].content[0].type")


def test_prompt_longer_than_context_is_400() -> None:
    engine = FakeEngine(context_length=8)
    with TestClient(make_app(engine)) as c:
        long = [{"role": "user", "content": "one two three four five six"}]
        assert_error(c.post(CHAT, json=body(messages=long)), 400, param="messages",
                     code="context_length_exceeded")
        assert_error(c.post(CHAT, json=body(max_tokens=5)), 400, param="messages",
                     code="context_length_exceeded")  # 6 prompt tokens + 5 > 8
    assert engine.requests == []


def test_error_responses_carry_a_request_id(client: TestClient) -> None:
    r = client.post(CHAT, json=body(temperature=9))
    assert r.status_code == 400 and r.headers.get("x-request-id")


# -- auth ---------------------------------------------------------------------------------------------


def test_bearer_key_required_when_configured() -> None:
    with TestClient(make_app(api_keys=("sk-right", "sk-other"))) as c:
        assert_error(c.post(CHAT, json=body()), 401, code="missing_api_key", type="authentication_error")
        assert_error(c.post(CHAT, json=body(), headers={"Authorization": "Bearer sk-wrong"}), 401,
                     code="invalid_api_key", type="authentication_error")
        assert_error(c.post(CHAT, json=body(), headers={"Authorization": "Basic sk-right"}), 401,
                     code="missing_api_key")
        assert_error(c.post(CHAT, json=body(), headers={"Authorization": "Bearer "}), 401)
        assert_error(c.get("/v1/models"), 401)
        # Auth comes before parsing: a malformed body from a stranger is still a 401.
        assert_error(c.post(CHAT, content=b"{", headers={"content-type": "application/json"}), 401)
        for key in ("sk-right", "sk-other"):
            r = c.post(CHAT, json=body(), headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        r = c.post(CHAT, json=body(), headers={"authorization": "bearer sk-right"})
        assert r.status_code == 200
        # health is public
        r = c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert c.get("/ready").status_code == 200


def test_no_keys_configured_means_open(client: TestClient) -> None:
    assert client.post(CHAT, json=body(), headers={"Authorization": "Bearer anything"}).status_code == 200


# -- limits and load ------------------------------------------------------------------------------------


def test_body_over_max_body_bytes_is_413() -> None:
    with TestClient(make_app(max_body_bytes=2048)) as c:
        big = body(messages=[{"role": "user", "content": "x" * 4000}])
        assert_error(c.post(CHAT, json=big), 413, code="request_too_large", type="invalid_request_error")
        assert c.post(CHAT, json=body()).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_queue_full_is_429_with_retry_after(engine: FakeEngine, client: TestClient, stream: bool) -> None:
    engine.full = True
    r = client.post(CHAT, json=body(stream=stream))
    assert_error(r, 429, code="queue_full", type="rate_limit_error")
    assert int(r.headers["retry-after"]) >= 1
    engine.full = False
    assert client.post(CHAT, json=body(stream=stream)).status_code == 200


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_engine_not_ready_while_loading_then_ready() -> None:
    release = threading.Event()
    engine = FakeEngine()

    def loader() -> ServedModel:
        release.wait(10)
        return served(engine)

    with TestClient(create_app(Settings(), loader)) as c:
        try:
            for r in (c.post(CHAT, json=body()), c.post(CHAT, json=body(stream=True)), c.get("/ready"),
                      c.get("/v1/models")):
                error = assert_error(r, 503, code="engine_not_ready", type="service_unavailable")
                assert "loading" in error["message"]
                assert r.headers["retry-after"]
            assert c.get("/health").status_code == 200  # the process is up
        finally:
            release.set()
        assert wait_for(lambda: c.get("/ready").status_code == 200)
        assert c.post(CHAT, json=body()).json()["choices"][0]["message"]["content"] == FULL_TEXT
    assert engine.closed  # shutdown closes the engine


def test_engine_not_ready_when_loading_fails() -> None:
    def loader() -> ServedModel:
        raise RuntimeError("weights not found in /nowhere")

    with TestClient(create_app(Settings(), loader)) as c:
        assert wait_for(lambda: "weights not found" in c.get("/ready").text)
        error = assert_error(c.post(CHAT, json=body()), 503, code="engine_not_ready")
        assert "loading failed" in error["message"] and "weights not found" in error["message"]
        assert c.get("/health").status_code == 200


def test_engine_reporting_unready_is_503(engine: FakeEngine, client: TestClient) -> None:
    """A loaded engine whose workers do not answer is unavailable, not loading (issue 20)."""
    engine.is_ready = False
    error = assert_error(client.post(CHAT, json=body()), 503, code="engine_unavailable")
    assert "still loading" not in error["message"] and "no worker is answering (fake)" in error["message"]
    assert_error(client.get("/ready"), 503, code="engine_unavailable")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, code="unknown_url")
    assert_error(client.post("/v1/completions", json=body()), 404, code="unknown_url")
    assert_error(client.get(CHAT), 405, code="method_not_allowed")


def test_engine_failure_is_an_openai_error_not_a_crash() -> None:
    engine = FakeEngine(fail_after=2)
    with TestClient(make_app(engine)) as c:
        error = assert_error(c.post(CHAT, json=body()), 500, code="engine_error", type="server_error")
        assert "simulated fault" in error["message"]
        events = sse_events(c.post(CHAT, json=body(stream=True)))
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "engine_error"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "Hello,"


# -- responses ----------------------------------------------------------------------------------------


def test_non_streaming_response_shape(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json=body())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert data["id"].startswith("chatcmpl-")
    assert r.headers["x-request-id"]
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and abs(data["created"] - time.time()) < 60
    assert data["model"] == "fake-model"
    assert data["system_fingerprint"] == "fp_fake"
    assert data["choices"] == [{"index": 0, "message": {"role": "assistant", "content": FULL_TEXT},
                                "logprobs": None, "finish_reason": "stop"}]
    prompt = len(engine.requests[0].prompt_ids)
    assert data["usage"] == {
        "prompt_tokens": prompt, "completion_tokens": SCRIPT_TOKENS, "total_tokens": prompt + SCRIPT_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    assert "confidence_score" not in data  # only when asked for


def test_cached_tokens_reported() -> None:
    with TestClient(make_app(FakeEngine(cached_tokens=4))) as c:
        usage = c.post(CHAT, json=body()).json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 4


def test_streaming_response_is_valid_sse(client: TestClient) -> None:
    r = client.post(CHAT, json=body(stream=True))
    assert r.headers["x-request-id"]
    assert r.headers["cache-control"] == "no-cache"
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake-model" for c in chunks)
    first, *middle, last = chunks
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["choices"][0]["finish_reason"] is None
    assert middle and all(list(c["choices"][0]["delta"]) == ["content"] for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == FULL_TEXT
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["choices"][0]["delta"] == {}
    assert last["usage"]["completion_tokens"] == SCRIPT_TOKENS
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert "usage" not in first and all("usage" not in c for c in middle)


def test_streaming_include_usage_adds_a_final_usage_chunk(client: TestClient) -> None:
    events = sse_events(client.post(CHAT, json=body(stream=True, stream_options={"include_usage": True})))
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == SCRIPT_TOKENS
    assert usage_chunk["usage"]["total_tokens"] == \
        usage_chunk["usage"]["prompt_tokens"] + usage_chunk["usage"]["completion_tokens"]
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for e in events[:-1] if e["choices"] == []) == 1
    # include_usage false: no empty-choices chunk
    events = sse_events(client.post(CHAT, json=body(stream=True, stream_options={"include_usage": False})))
    assert all(e["choices"] for e in events[:-1])


@pytest.mark.parametrize("n", [1, 2])
def test_usage_is_on_exactly_one_chunk(client: TestClient, n: int) -> None:
    """LangChain sums usage over chunks (issue 19): with include_usage, only OpenAI's last chunk (empty choices)
    carries it and every other chunk says null; without it, only the finish chunk does (seed 003's shape)."""
    events = sse_events(client.post(CHAT, json=body(stream=True, n=n, stream_options={"include_usage": True})))
    chunks = events[:-1]
    assert all("usage" in c for c in chunks)
    carrying = [c for c in chunks if c["usage"] is not None]
    assert len(carrying) == 1 and carrying[0] is chunks[-1] and chunks[-1]["choices"] == []
    assert carrying[0]["usage"]["completion_tokens"] == n * SCRIPT_TOKENS
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == n and all(c["usage"] is None for c in finishes)
    for options in ({}, {"stream_options": {"include_usage": False}}):
        chunks = sse_events(client.post(CHAT, json=body(stream=True, n=n, **options)))[:-1]
        carrying = [c for c in chunks if c.get("usage") is not None]
        assert len(carrying) == 1 and carrying[0]["choices"][0]["finish_reason"] == "stop"
        assert carrying[0] is chunks[-1] and all(c["choices"] for c in chunks)
        assert carrying[0]["usage"]["completion_tokens"] == n * SCRIPT_TOKENS


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_are_trimmed(client: TestClient, engine: FakeEngine, stream: bool) -> None:
    r = client.post(CHAT, json=body(stop=["zzz", " world"], stream=stream))
    if stream:
        events = sse_events(r)
        content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:-1])
        finish = events[-2]["choices"][0]["finish_reason"]
        usage = events[-2]["usage"]
    else:
        data = r.json()
        content = data["choices"][0]["message"]["content"]
        finish = data["choices"][0]["finish_reason"]
        usage = data["usage"]
    assert content == "Hello,"
    assert finish == "stop"
    assert usage["completion_tokens"] == 3  # "Hello", ",", " world" were generated
    # The engine's stream was closed as soon as the stop string matched.
    assert engine.released == [engine.requests[0].request_id]


class EventsEngine(FakeEngine):
    """Sends the given (text, token ids) events as they are; the last one ends the choice by length."""

    def __init__(self, events: list[tuple[str, list[int]]]) -> None:
        super().__init__()
        self.events = events

    async def _events(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        for i, (text, ids) in enumerate(self.events):
            last = i == len(self.events) - 1
            yield EngineEvent(index=0, token_ids=ids, text=text, finish_reason="length" if last else None,
                              facts=RequestFacts(len(req.prompt_ids)) if i == 0 or last else None)


SEVERAL = [("a", [1]), ("bc", [2, 3]), ("", [4]), ("E", [5])]  # several tokens in one event, one with no text yet


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("events", "content", "finish", "tokens"), [
    (SEVERAL, "abcE", "length", 5),  # "E" was held back (it may begin "END") until the end
    ([*SEVERAL, ("ND", [6, 7])], "abc", "stop", 7),  # the stop string's tokens were generated too
    ([("x", [1])] * 9, "x" * 9, "length", 9),
])
def test_usage_counts_every_generated_token(stream: bool, events: list[tuple[str, list[int]]], content: str,
                                            finish: str, tokens: int) -> None:
    fields: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    with TestClient(make_app(EventsEngine(events))) as c:
        r = c.post(CHAT, json=body(stop=["END"], **fields))
    if stream:
        chunks = sse_events(r)[:-1]
        choices = [e["choices"][0] for e in chunks if e["choices"]]
        text = "".join(choice["delta"].get("content") or "" for choice in choices)
        reason, usage = choices[-1]["finish_reason"], chunks[-1]["usage"]
    else:
        data = r.json()
        text, reason, usage = data["choices"][0]["message"]["content"], data["choices"][0]["finish_reason"], \
            data["usage"]
    assert (text, reason) == (content, finish)
    assert usage["completion_tokens"] == tokens


def test_stop_as_a_single_string(client: TestClient) -> None:
    data = client.post(CHAT, json=body(stop="!")).json()
    assert data["choices"][0]["message"]["content"] == "Hello, world"


def test_max_tokens_gives_finish_reason_length(client: TestClient, engine: FakeEngine) -> None:
    data = client.post(CHAT, json=body(max_tokens=3)).json()
    assert data["choices"][0]["message"]["content"] == "Hello, world"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    assert engine.requests[0].sampling.max_new_tokens == 3
    client.post(CHAT, json=body(max_completion_tokens=2))
    assert engine.requests[1].sampling.max_new_tokens == 2


def test_sampling_parameters_reach_the_engine(client: TestClient, engine: FakeEngine) -> None:
    client.post(CHAT, json=body(temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, presence_penalty=0.5,
                                frequency_penalty=-0.5, seed=1234, n=2))
    req = engine.requests[0]
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.3, 0.9, 40, 0.05)
    assert (s.presence_penalty, s.frequency_penalty, s.seed) == (0.5, -0.5, 1234)
    assert s.stop_token_ids == (EOS_ID,)
    assert req.n == 2
    assert s.max_new_tokens == engine.model_info.context_length - len(req.prompt_ids)


def test_server_defaults_apply_when_the_request_is_silent(engine: FakeEngine) -> None:
    with TestClient(make_app(engine, default_temperature=0.2, default_top_p=0.8, default_max_tokens=4)) as c:
        data = c.post(CHAT, json=body()).json()
        assert data["choices"][0]["finish_reason"] == "length"
        s = engine.requests[0].sampling
        assert (s.temperature, s.top_p, s.max_new_tokens) == (0.2, 0.8, 4)
        c.post(CHAT, json=body(temperature=0, max_tokens=6))
        s = engine.requests[1].sampling
        assert (s.temperature, s.max_new_tokens) == (0, 6)


def test_n_choices(client: TestClient) -> None:
    data = client.post(CHAT, json=body(n=3)).json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == FULL_TEXT for c in data["choices"])
    assert data["usage"]["completion_tokens"] == 3 * SCRIPT_TOKENS


def test_n_choices_streaming(client: TestClient) -> None:
    events = sse_events(client.post(CHAT, json=body(n=2, stream=True)))
    chunks = events[:-1]
    assert [c["index"] for c in chunks[0]["choices"]] == [0, 1]
    assert all(c["delta"]["role"] == "assistant" for c in chunks[0]["choices"])
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[1:] if c["choices"][0]["index"] == index]
        assert "".join(c["delta"].get("content", "") for c in mine) == FULL_TEXT
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]
    with_usage = [c for c in chunks if "usage" in c]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]  # usage once, when the last choice ends
    assert with_usage[0]["usage"]["completion_tokens"] == 2 * SCRIPT_TOKENS


def test_logprobs(client: TestClient) -> None:
    data = client.post(CHAT, json=body(logprobs=True, top_logprobs=2)).json()
    content = data["choices"][0]["logprobs"]["content"]
    # The end-of-turn token that stopped the choice is not part of the output, so not of its logprobs.
    assert [e["token"] for e in content] == list(DEFAULT_SCRIPT)
    assert content[2]["bytes"] == list(b" world")
    assert all(e["logprob"] == -0.25 and len(e["top_logprobs"]) == 2 for e in content)
    assert content[0]["top_logprobs"][0] == {"token": "Hello", "logprob": -0.25, "bytes": list(b"Hello")}
    assert 0 < data["confidence_score"] <= 100

    data = client.post(CHAT, json=body(logprobs=True, stop=" world")).json()
    content = data["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["Hello", ","]  # the stop string's token is not shown
    assert all(e["top_logprobs"] == [] for e in content)


def test_logprobs_streaming(client: TestClient) -> None:
    events = sse_events(client.post(CHAT, json=body(stream=True, logprobs=True, top_logprobs=1)))
    tokens = []
    for e in events[1:-1]:
        choice = e["choices"][0]
        if choice["logprobs"] is not None:
            entries = choice["logprobs"]["content"]
            tokens.extend(x["token"] for x in entries)
            assert "".join(x["token"] for x in entries) == choice["delta"].get("content", "")
    assert tokens == list(DEFAULT_SCRIPT)


@pytest.mark.parametrize("path", [CHAT, CHAT_V3])
def test_both_paths_serve_chat_completions(client: TestClient, path: str) -> None:
    data = client.post(path, json=body()).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == FULL_TEXT
    events = sse_events(client.post(path, json=body(stream=True)))
    assert events[-1] == "[DONE]"
    assert_error(client.post(path, json=body(temperature=5)), 400, param="temperature")


def test_request_id_header_matches_completion_id(client: TestClient) -> None:
    r = client.post(CHAT, json=body())
    assert r.headers["x-request-id"] == r.json()["id"]
    r2 = client.post(CHAT, json=body())
    assert r2.headers["x-request-id"] != r.headers["x-request-id"]


def test_models_and_ready(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "fake-model" and card["object"] == "model"
    assert card["aliases"] == ["fake"] and card["vision"] is False and card["context_length"] == 512
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"] == "fake-model"


def test_a_deleted_session_is_forgotten_by_the_engine(engine: FakeEngine, client: TestClient) -> None:
    """Engine.forget_session is part of the protocol: the app calls it, not found with getattr."""
    headers = {"X-Session-ID": "forget-me"}
    assert client.post(CHAT, json=body(), headers=headers).status_code == 200
    assert client.delete("/v1/sessions/forget-me").status_code == 200
    assert len(engine.forgotten) == 1 and engine.forgotten[0].endswith("forget-me")
