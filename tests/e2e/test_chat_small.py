"""End to end through the official openai client against a real server running SmolLM2-135M."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Write one short sentence about the sea."}]


def test_non_streaming_completion(client):
    resp = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=20, temperature=0)
    assert resp.id.startswith("chatcmpl-")
    assert resp.object == "chat.completion"
    assert resp.model == "smollm2-135m-instruct"  # the alias resolves to the model id
    assert resp.system_fingerprint
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = resp.usage
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens  # reported, 0 included
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_streaming_matches_non_streaming(client):
    kwargs = dict(model="smollm2", messages=MESSAGES, max_tokens=24, temperature=0)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_gives_length(client):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count from 1 to 100, comma separated."}],
        max_tokens=5, temperature=0)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5


def test_max_completion_tokens_is_honoured(client):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count from 1 to 100, comma separated."}],
        max_completion_tokens=3, temperature=0)
    assert resp.usage.completion_tokens == 3


def test_stop_string_is_trimmed(client):
    messages = [{"role": "user", "content": "Describe a city in three sentences."}]
    free = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=40, temperature=0)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) > 6
    stop = " " + words[4]  # a stop string in the middle of what the model says anyway
    expected = text[: text.index(stop)]
    resp = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=40, temperature=0,
                                          stop=[stop, "never-appears"])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == expected
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=40, temperature=0, stop=stop, stream=True)
        if c.choices)
    assert streamed == expected


def test_n_returns_distinct_choices(client):
    resp = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12, n=3,
                                          temperature=1.0, seed=7)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    texts = {c.message.content for c in resp.choices}
    assert len(texts) > 1  # independently sampled
    # one prompt processing: the prompt is counted once
    single = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=1)
    assert resp.usage.prompt_tokens == single.usage.prompt_tokens


def test_n_streaming_delivers_every_choice(client):
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=8, n=2,
                                            stream=True)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_seed_reproduces_output(client):
    kwargs = dict(model="smollm2", messages=MESSAGES, max_tokens=20, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    other = client.chat.completions.create(**{**kwargs, "seed": 99}).choices[0].message.content
    assert first == second
    assert other != first


def test_logprobs(client):
    resp = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens or resp.choices[0].finish_reason == "stop"
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # greedy decoding picks the most likely token
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs))
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(bytes(b for e in content for b in e.bytes).decode()) == resp.choices[0].message.content
    score = resp.model_extra["confidence_score"]
    assert 0 < score <= 100


def test_seed_003_path_and_models(client, small_server):
    body = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 4}
    resp = httpx.post(f"{small_server.base_url}/api/v3/inference/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"
    models = client.models.list()
    card = models.data[0]
    assert card.id == "smollm2-135m-instruct"
    assert card.model_extra["aliases"] == ["smollm2"]
    assert card.model_extra["context_length"] == 8192
    assert card.model_extra["vision"] is False


def test_error_classes_through_sdk(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=3)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=[
            {"role": "user", "content": "word " * 9000}])
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=[])
    assert err.value.body["param"] == "messages"


def test_concurrent_requests_are_batched(client, small_server):
    """Four requests at once decode together (a batch), not one after another."""
    import concurrent.futures

    def one(i: int) -> str:
        return client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Tell a story about the number {i}."}],
            max_tokens=48, temperature=0).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(4)]
        largest_batch = 0
        while not all(f.done() for f in futures):
            largest_batch = max(largest_batch, httpx.get(f"{small_server.base_url}/ready").json()["engine"]["running"])
            time.sleep(0.02)
        results = [f.result() for f in futures]
    assert all(results)
    assert largest_batch >= 3


def test_disconnect_stops_generation(small_server):
    url = f"{small_server.base_url}/v1/chat/completions"
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 2000, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", url, json=body, timeout=60) as resp:
        lines = 0
        for line in resp.iter_lines():
            lines += bool(line.startswith("data:"))
            if lines >= 5:
                break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = httpx.get(f"{small_server.base_url}/ready").json()["engine"]
        if stats["running"] == 0 and stats["requests"] == 0:
            break
        time.sleep(0.05)
    assert {k: stats[k] for k in ("running", "waiting", "requests")} == {"running": 0, "waiting": 0, "requests": 0}


def _metrics(server) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_follow_real_requests(client, small_server):
    """The openai SDK's requests show up in /metrics: counts, first-token timings, tokens as usage says."""
    before = _metrics(small_server)
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    after = _metrics(small_server)

    def delta(name: str, *labels: tuple[str, str]) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok = (("route", "/v1/chat/completions"), ("method", "POST"), ("status", "200"))
    assert delta("lodestar_requests_total", *ok) == 1
    assert delta("lodestar_time_to_first_token_seconds_count") == 1
    assert delta("lodestar_queue_wait_seconds_count") == 1  # the embedded engine reports its queue wait
    assert delta("lodestar_inter_token_latency_seconds_count") == usage.completion_tokens - 1
    assert delta("lodestar_tokens_total", ("kind", "completion")) == usage.completion_tokens
    assert delta("lodestar_tokens_total", ("kind", "prompt")) == usage.prompt_tokens
    assert after[("lodestar_model_loaded", ())] == 1
    assert after[("lodestar_engine_running", ())] == 0


def test_top_logprobs_under_a_grammar_are_numbers(client):
    """Tokens a grammar forbids are not listed as alternatives (they had logprob -inf, sent as null; issue 19):
    every listed alternative has a real logprob, and the sampled token is among the allowed ones."""
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Give me a JSON object with a name."}],
        max_tokens=12, temperature=0, logprobs=True, top_logprobs=20, response_format={"type": "json_object"})
    content = reply.choices[0].logprobs.content
    assert content
    shortened = 0
    for position in content:
        assert isinstance(position.logprob, float) and position.logprob <= 0
        assert all(isinstance(t.logprob, float) and t.logprob <= 0 for t in position.top_logprobs)
        assert position.top_logprobs and position.top_logprobs[0].logprob >= position.logprob - 1e-6
        shortened += len(position.top_logprobs) < 20
    assert shortened  # the grammar allowed fewer than 20 tokens somewhere (e.g. the opening "{")
