"""Lodestar --engine sglang end to end: the official openai client, a real Lodestar server, two stand-in
SGLang workers (SGLang's own request decoder, SmolLM2 tokens) and one worker URL where nothing listens."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.sglang.conftest import Deployment, deploy, stop
from tests.sglang.standin import StandIn

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def ask(client: openai.OpenAI, messages=PARIS, **kw):
    kw.setdefault("max_tokens", 30)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="smollm2", messages=messages, **kw)


def engine_stats(deployment: Deployment) -> dict:
    return httpx.get(f"{deployment.server.base_url}/ready", timeout=10).json()["engine"]


def wait_for(check, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_chat_answers_through_sglang_contract(two_workers: Deployment):
    before = sum(len(w.requests) for w in two_workers.workers)
    reply = ask(two_workers.client())
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0
    assert sum(len(w.requests) for w in two_workers.workers) == before + 1
    sent = next(w.requests[-1] for w in two_workers.workers if w.requests)
    # Token ids, Lodestar's stop tokens, a rid for /abort_request: the body as SGLang decoded it.
    assert isinstance(sent.input_ids, list) and sent.text is None and sent.stream is True
    assert sent.rid.startswith("chatcmpl-") and sent.sampling_params.stop_token_ids


def test_models_lists_the_runtime(two_workers: Deployment, smollm2_engine):
    models = two_workers.client().models.list().data
    assert [m.id for m in models] == ["standin-model"]
    # The real server says context_length null (no --context-length): the model's own context counts,
    # not an invented 4096 (issue 20); SmolLM2's config says 8192.
    assert models[0].model_extra["context_length"] == smollm2_engine.model_info.context_length == 8192


def test_omitted_max_tokens_fill_the_real_context(two_workers: Deployment):
    before = [len(w.requests) for w in two_workers.workers]
    reply = ask(two_workers.client(), max_tokens=None)
    sent = next(w.requests[-1] for w, n in zip(two_workers.workers, before, strict=True) if len(w.requests) > n)
    assert sent.sampling_params.max_new_tokens == 8192 - reply.usage.prompt_tokens


def test_ignore_eos_reaches_the_worker(two_workers: Deployment):
    """Without ignore_eos in sampling_params a worker stops at the model's EOS, whatever stop_token_ids say."""
    reply = ask(two_workers.client(), max_tokens=40, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 40
    sent = next(w.requests[-1] for w in two_workers.workers if w.requests)
    assert sent.sampling_params.ignore_eos is True and not sent.sampling_params.stop_token_ids
    plain = ask(two_workers.client(), max_tokens=40)  # the same question ends at the model's own end
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens < 40


def test_connections_to_workers_are_kept_alive(two_workers: Deployment):
    """Each stream is read to its [DONE], so the connection goes back to the pool (it was one per call)."""
    client = two_workers.client()
    ask(client)  # a pooled connection to whichever worker exists from here on
    before = [set(w.connections) for w in two_workers.workers]
    calls = 8
    for stream in (False, True):
        for _ in range(calls // 2):
            reply = ask(client, stream=stream, max_tokens=8)
            if stream:
                assert [c for c in reply]  # read to the end
    new = sum(len(w.connections - b) for w, b in zip(two_workers.workers, before, strict=True))
    assert new <= 1, f"{new} new connections for {calls} calls"


def test_streaming_matches_the_whole_response(two_workers: Deployment):
    client = two_workers.client()
    whole = ask(client).choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in ask(client, stream=True) if c.choices]
    assert len(pieces) > 3 and "".join(pieces) == whole


def test_cumulative_and_incremental_workers_give_the_same_text(two_workers: Deployment):
    """Session ids spread requests over both workers (one streams cumulative output, one incremental)."""
    client = two_workers.client()
    texts, served = set(), set()
    for i in range(12):
        counts = [len(w.requests) for w in two_workers.workers]
        reply = ask(client, messages=[{"role": "user", "content": "Name three colors."}],
                    extra_headers={"X-Session-ID": f"spread-{i}"})
        texts.add(reply.choices[0].message.content)
        served |= {w.name for w, c in zip(two_workers.workers, counts, strict=True) if len(w.requests) > c}
        if served == {"a", "b"} and i >= 3:
            break
    assert served == {"a", "b"}
    assert len(texts) == 1 and texts.pop()


def test_n_seeded_choices_differ_and_repeat(two_workers: Deployment):
    client = two_workers.client()
    kw = {"n": 3, "seed": 11, "temperature": 1.0, "max_tokens": 12}
    first = [c.message.content for c in ask(client, **kw).choices]
    again = [c.message.content for c in ask(client, **kw).choices]
    assert len(first) == 3 and len(set(first)) > 1
    assert first == again
    sent = next(w.requests[-1] for w in two_workers.workers if w.requests and isinstance(w.requests[-1].rid, list))
    assert [p.sampling_seed for p in sent.sampling_params] == [11, 12, 13]


def test_stop_string_cuts_the_answer(two_workers: Deployment):
    client = two_workers.client()
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    full = ask(client, messages=messages, max_tokens=40).choices[0].message.content
    words = full.split()
    assert len(words) > 4
    stop = " " + words[3]
    reply = ask(client, messages=messages, max_tokens=40, stop=[stop])
    cut = reply.choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]
    # The worker was given the stop string and ended the choice there, not at max_tokens.
    sent = next(w.requests[-1] for w in two_workers.workers if w.requests and w.requests[-1].sampling_params.stop)
    assert sent.sampling_params.stop == [stop]
    assert reply.usage.completion_tokens < 40


def test_logprobs_come_from_the_worker(two_workers: Deployment):
    reply = ask(two_workers.client(), logprobs=True, top_logprobs=2).choices[0]
    tokens = reply.logprobs.content
    assert tokens and "".join(t.token for t in tokens) == reply.message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    sent = next(w.requests[-1] for w in two_workers.workers if w.requests and w.requests[-1].return_logprob)
    assert sent.top_logprobs_num == 2


def test_logit_bias_is_sent_as_sglang_takes_it_and_applied(two_workers: Deployment, smollm2_engine):
    """+100 on " banana" and -100 on the end-of-turn token: the workers get SGLang's string-keyed map (the
    stand-in applies SGLang's own vocabulary check) and the answer is that token, three times."""
    tokenizer = smollm2_engine.tokenizer
    banana = tokenizer(" banana", add_special_tokens=False).input_ids[0]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reply = ask(two_workers.client(), max_tokens=3, logit_bias={str(banana): 100, str(end): -100})
    assert reply.choices[0].message.content == " banana" * 3
    sent = next(w.requests[-1] for w in two_workers.workers if w.requests and w.requests[-1].sampling_params.logit_bias)
    assert sent.sampling_params.logit_bias == {str(banana): 100.0, str(end): -100.0}
    # Ids outside the vocabulary never reach a worker: Lodestar answers 400 itself, naming the param.
    before = sum(len(w.requests) for w in two_workers.workers)
    with pytest.raises(openai.BadRequestError) as err:
        ask(two_workers.client(), max_tokens=3, logit_bias={str(smollm2_engine.model_info.vocab_size): 1})
    assert err.value.body["param"] == "logit_bias"
    assert sum(len(w.requests) for w in two_workers.workers) == before


def test_sessions_stick_to_one_worker_and_reuse_its_cache(two_workers: Deployment):
    client = two_workers.client()
    for s in range(4):
        session = f"affinity-{s}"
        messages = [{"role": "user", "content": f"Tell me a fact about the number {s}."}]
        first = ask(client, messages=messages, max_tokens=8, extra_headers={"X-Session-ID": session})
        second = ask(client, messages=[{"role": "user", "content": "And another one."}], max_tokens=8,
                     extra_headers={"X-Session-ID": session})
        assert first.usage.prompt_tokens_details.cached_tokens >= 0
        assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens // 2
        holders = {w.name for w in two_workers.workers
                   for h in w.headers if h.get("x-smg-routing-key", "").endswith(":" + session)}
        assert len(holders) == 1, f"session {session} was served by {holders}"


def test_client_disconnect_aborts_the_request(two_workers: Deployment):
    client = two_workers.client()
    aborted_before = sum(len(w.aborted) for w in two_workers.workers)
    stream = ask(client, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
                 max_tokens=400, temperature=1.0, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert wait_for(lambda: sum(len(w.aborted) for w in two_workers.workers) > aborted_before)
    assert wait_for(lambda: engine_stats(two_workers)["running"] == 0)


def test_worker_400_becomes_openai_400(two_workers: Deployment):
    for w in two_workers.workers:
        w.faults.refuse_next = 1
    try:
        with pytest.raises(openai.BadRequestError) as err:
            ask(two_workers.client())
        assert "too long" in str(err.value)
    finally:
        for w in two_workers.workers:
            w.faults.refuse_next = 0


def test_worker_dying_mid_stream_ends_the_stream_with_an_error_and_leaves_rotation(two_workers: Deployment):
    for w in two_workers.workers:
        w.faults.die_after_chunks = 2
    try:
        with pytest.raises(openai.APIError):
            for _ in ask(two_workers.client(), max_tokens=40, stream=True):
                pass
    finally:
        for w in two_workers.workers:
            w.faults.die_after_chunks = None
    # Out of rotation at once (the 1 s health probe may already have put it back, so read the log).
    assert wait_for(lambda: "out of rotation" in two_workers.server.log())
    assert "Paris" in ask(two_workers.client()).choices[0].message.content  # the other worker serves
    assert wait_for(lambda: engine_stats(two_workers)["workers_up"] == 2, timeout=20)  # health brings it back


def test_hanging_worker_times_out_with_504(two_workers: Deployment):
    for w in two_workers.workers:
        w.faults.hang_next = 1
    try:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            ask(two_workers.client())
        assert err.value.status_code == 504
        assert time.monotonic() - started < 15
    finally:
        for w in two_workers.workers:
            w.faults.hang_next = 0
    assert wait_for(lambda: engine_stats(two_workers)["workers_up"] == 2, timeout=20)


def test_contract_error_from_sglang_is_a_400(two_workers: Deployment):
    """The stand-in refuses what SGLang's decoder refuses, with SGLang's 400 (so the tests above prove that
    every body Lodestar sent was acceptable to SGLang)."""
    response = httpx.post(f"{two_workers.urls[0]}/generate",
                          json={"input_ids": [1], "stream": True, "sampling_params": {"bogus": 1}}, timeout=10)
    assert response.status_code == 400 and "bogus" in response.json()["error"]


def test_unreachable_worker_is_skipped(tmp_path, smollm2_engine):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # A worker with SGLang's defaults: no --enable-deterministic-inference, so seeds do nothing there.
    deployment, servers = deploy(tmp_path, "smollm2", StandIn(smollm2_engine, name="live"), dead_urls=(dead,))
    try:
        client = deployment.client()
        for i in range(6):  # sessions that hash to the dead worker are retried on the live one
            assert "Paris" in ask(client, extra_headers={"X-Session-ID": f"dead-{i}"}).choices[0].message.content
        assert len(deployment.workers[0].requests) == 6
        stats = engine_stats(deployment)
        assert stats["workers"] == 2 and stats["workers_up"] == 1

        # Seeds on such a worker: sent, and the log says once that they are not honoured.
        for _ in range(2):
            ask(client, seed=5, temperature=1.0, max_tokens=4)
        assert deployment.workers[0].requests[-1].sampling_params.sampling_seed == 5
        assert deployment.server.log().count("--enable-deterministic-inference") == 1

        # Every worker down: 503 engine_unavailable naming both, then (out of rotation) the same code,
        # never "still loading".
        servers[0].should_exit = True
        assert wait_for(lambda: not _answers(deployment.urls[1]))
        with pytest.raises(openai.APIStatusError) as first:
            ask(client)
        assert first.value.status_code == 503 and first.value.body["code"] == "engine_unavailable"
        assert dead in first.value.body["message"] and deployment.urls[1] in first.value.body["message"]
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as later:
                ask(client)
            assert later.value.status_code == 503 and later.value.body["code"] == "engine_unavailable", later.value.body
            assert "loading" not in later.value.body["message"]
    finally:
        stop(deployment, servers)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
