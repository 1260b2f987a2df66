"""The embedded engine end to end on the real SmolLM2-135M (fp32): scheduler thread, batching, events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import torch

from core.settings import SchedulerSettings
from engines.base import EngineError, EngineEvent, EngineRequest, RequestFacts, SamplingParams
from engines.embedded.decoder import Decoder
from engines.embedded.engine import EmbeddedEngine
from engines.embedded.loader import LoadedModel

TIMEOUT = 60.0
QUESTION = "What is the capital of France?"
LONG_QUESTION = ("Here is a short story. A lighthouse keeper lived alone on a rocky island for thirty years. "
                 "Every night he lit the lamp and every morning he wrote one line in his logbook. "
                 "Summarise the story in one sentence.")


@pytest.fixture(scope="module")
def fp32(smollm: LoadedModel) -> LoadedModel:
    return LoadedModel(smollm.model, smollm.tokenizer, "smollm2-135m-instruct", ("smollm2",))


def run_engine(loaded: LoadedModel, body: Callable[[EmbeddedEngine], Awaitable[Any]], *,
               max_batch_size: int = 4, prefill_chunk: int = 16, max_queue: int = 64,
               prefix_cache_bytes: int = 0) -> Any:
    """Build an engine, run `body` against it in a fresh event loop, and always close it."""

    async def main() -> Any:
        engine = EmbeddedEngine(loaded, scheduler=SchedulerSettings(
            max_batch_size=max_batch_size, prefill_chunk=prefill_chunk, max_queue=max_queue,
            prefix_cache_bytes=prefix_cache_bytes))
        try:
            return await asyncio.wait_for(body(engine), TIMEOUT)
        finally:
            await engine.close()
            assert not engine._scheduler._thread.is_alive()

    return asyncio.run(main())


def request(prompt: list[int], *, request_id: str = "r1", n: int = 1, **sampling: Any) -> EngineRequest:
    sampling.setdefault("max_new_tokens", 8)
    sampling.setdefault("temperature", 0.0)
    return EngineRequest(request_id=request_id, prompt_ids=prompt, sampling=SamplingParams(**sampling), n=n)


async def collect(events: AsyncIterator[EngineEvent]) -> dict[int, list[EngineEvent]]:
    by_choice: dict[int, list[EngineEvent]] = {}
    async for event in events:
        by_choice.setdefault(event.index, []).append(event)
    return by_choice


def load(engine: EmbeddedEngine) -> dict[str, int]:
    """The engine's load figures (stats() also carries cache counters)."""
    return {key: engine.stats()[key] for key in ("running", "waiting", "requests")}


def tokens_of(events: list[EngineEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def manual_greedy(decoder: Decoder, prompt: list[int], steps: int) -> list[int]:
    """The reference: one-shot prefill, then one decode per token, argmax each time."""
    with torch.inference_mode():
        cache = decoder.new_cache(len(prompt))
        logits = decoder.prefill(cache, prompt)
        out: list[int] = []
        for _ in range(steps):
            out.append(int(torch.argmax(logits)))
            logits = decoder.decode([cache], [out[-1]])[0]
    return out


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def check_choice(events: list[EngineEvent], prompt_len: int) -> None:
    """Every choice: events carry one token each, only the last one has a finish reason."""
    assert events, "a choice without events"
    assert all(e.finish_reason is None for e in events[:-1])
    assert events[-1].finish_reason in ("stop", "length")
    assert all(len(e.token_ids) == 1 for e in events)
    assert all(f.prompt_tokens == prompt_len for f in facts_of(events))


def facts_of(events: list[EngineEvent]) -> list[RequestFacts]:
    """A choice's request facts: on its first and last events, and on no event between."""
    assert events[0].facts is not None and events[-1].facts is not None
    assert all(e.facts is None for e in events[1:-1])
    return [e.facts for e in events if e.facts is not None]


def test_model_info(fp32: LoadedModel) -> None:
    async def body(engine: EmbeddedEngine) -> None:
        info = engine.model_info
        assert (info.id, info.aliases, info.vision) == ("smollm2-135m-instruct", ("smollm2",), False)
        assert info.context_length == fp32.model.config.max_position_embeddings
        assert engine.unavailable() is None
        assert load(engine) == {"running": 0, "waiting": 0, "requests": 0}

    run_engine(fp32, body)


def test_greedy_generation_equals_manual_greedy_loop(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    prompt = chat_ids(QUESTION)
    expected = manual_greedy(decoder, prompt, 12)

    async def body(engine: EmbeddedEngine) -> dict[int, list[EngineEvent]]:
        return await collect(engine.generate(request(prompt, max_new_tokens=12)))

    # One prefill chunk covers the prompt, so the engine runs exactly the manual loop's forward passes.
    choices = run_engine(fp32, body, prefill_chunk=512)
    assert list(choices) == [0]
    events = choices[0]
    check_choice(events, len(prompt))
    assert tokens_of(events) == expected
    assert "".join(e.text for e in events) == fp32.tokenizer.decode(expected, skip_special_tokens=True)
    assert "Paris" in "".join(e.text for e in events)
    assert events[-1].finish_reason == "length"


def test_prompt_longer_than_prefill_chunk(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    prompt = chat_ids(LONG_QUESTION)
    assert len(prompt) > 3 * 16
    chunks: list[int] = []

    async def chunked(engine: EmbeddedEngine) -> list[int]:
        inner = engine._scheduler.decoder
        real_prefill = inner.prefill

        def spy(cache: Any, ids: list[int]) -> torch.Tensor:
            chunks.append(len(ids))
            return real_prefill(cache, ids)

        inner.prefill = spy  # type: ignore[method-assign]
        try:
            return tokens_of((await collect(engine.generate(request(prompt, max_new_tokens=10))))[0])
        finally:
            del inner.prefill

    async def one_chunk(engine: EmbeddedEngine) -> list[int]:
        return tokens_of((await collect(engine.generate(request(prompt, max_new_tokens=10))))[0])

    small = run_engine(fp32, chunked, prefill_chunk=16)
    large = run_engine(fp32, one_chunk, prefill_chunk=4096)
    q, r = divmod(len(prompt), 16)
    assert chunks == [16] * q + ([r] if r else [])  # it really was prefilled 16 tokens at a time
    assert small == large == manual_greedy(decoder, prompt, 10)


def test_n_choices_with_seed(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids("Write a word.")

    async def body(engine: EmbeddedEngine) -> dict[int, list[EngineEvent]]:
        return await collect(engine.generate(request(prompt, n=3, seed=1234, temperature=1.0, max_new_tokens=6)))

    first = run_engine(fp32, body)
    assert sorted(first) == [0, 1, 2]
    for events in first.values():
        check_choice(events, len(prompt))
        assert len(tokens_of(events)) == 6 and events[-1].finish_reason == "length"
    # The same seed reproduces every choice exactly, even though the choices decode together.
    again = run_engine(fp32, body)
    assert {i: tokens_of(e) for i, e in again.items()} == {i: tokens_of(e) for i, e in first.items()}


def test_n_choices_share_the_prompt_but_decode_independently(fp32: LoadedModel, decoder: Decoder,
                                                             chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> dict[int, list[EngineEvent]]:
        return await collect(engine.generate(request(prompt, n=3, max_new_tokens=6)))

    choices = run_engine(fp32, body)
    expected = manual_greedy(decoder, prompt, 6)
    # Greedy: each of the three forked caches continues exactly as a lone sequence would.
    assert [tokens_of(choices[i]) for i in range(3)] == [expected] * 3


def test_max_new_tokens_gives_length(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> list[dict[int, list[EngineEvent]]]:
        return [await collect(engine.generate(request(prompt, max_new_tokens=k, request_id=f"r{k}")))
                for k in (1, 5)]

    for k, choices in zip((1, 5), run_engine(fp32, body), strict=True):
        events = choices[0]
        check_choice(events, len(prompt))
        assert len(tokens_of(events)) == k
        assert events[-1].finish_reason == "length"


def test_stop_token_gives_stop(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    prompt = chat_ids(QUESTION)
    greedy = manual_greedy(decoder, prompt, 8)
    stop = greedy[3]
    cut = greedy.index(stop) + 1

    async def body(engine: EmbeddedEngine) -> dict[int, list[EngineEvent]]:
        return await collect(engine.generate(request(prompt, max_new_tokens=32, stop_token_ids=(stop, 99))))

    events = run_engine(fp32, body)[0]
    check_choice(events, len(prompt))
    assert events[-1].finish_reason == "stop"
    assert tokens_of(events) == greedy[:cut]  # the stop token is reported, nothing after it
    # Its text is not: the text is exactly what came before it.
    assert "".join(e.text for e in events) == fp32.tokenizer.decode(greedy[: cut - 1])


def test_chat_ends_at_end_of_turn(fp32: LoadedModel, tokenizer, chat_ids) -> None:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def body(engine: EmbeddedEngine) -> dict[int, list[EngineEvent]]:
        req = request(chat_ids("Say just: yes"), max_new_tokens=24, stop_token_ids=(im_end,))
        return await collect(engine.generate(req))

    events = run_engine(fp32, body)[0]
    assert events[-1].finish_reason == "stop"
    assert events[-1].token_ids == [im_end]
    assert "im_end" not in "".join(e.text for e in events)


def test_concurrent_requests_match_running_alone(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    prompts = [chat_ids(QUESTION), chat_ids("Count to five."), chat_ids(LONG_QUESTION)]

    async def body(engine: EmbeddedEngine) -> list[dict[int, list[EngineEvent]]]:
        streams = [engine.generate(request(p, request_id=f"c{i}", max_new_tokens=6))
                   for i, p in enumerate(prompts)]
        return await asyncio.gather(*(collect(s) for s in streams))

    results = run_engine(fp32, body)
    for prompt, choices in zip(prompts, results, strict=True):
        assert tokens_of(choices[0]) == manual_greedy(decoder, prompt, 6)


def test_logprobs_reach_the_events(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> dict[int, list[EngineEvent]]:
        req = request(prompt, max_new_tokens=3)
        req.logprobs, req.top_logprobs = True, 4
        return await collect(engine.generate(req))

    for event in run_engine(fp32, body)[0]:
        assert event.logprobs is not None and len(event.logprobs) == 1
        entry = event.logprobs[0]
        assert entry.token_id == event.token_ids[0]
        assert len(entry.top) == 4 and entry.top[0][0] == entry.token_id  # greedy picks the top one
        assert entry.logprob <= 0.0


def test_aclose_frees_the_slot(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> list[int]:
        stream = engine.generate(request(prompt, n=2, temperature=1.0, seed=3, max_new_tokens=500))
        received = 0
        async for _ in stream:
            received += 1
            if received == 4:
                break
        assert engine.stats()["running"] == 2
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_until(lambda: engine.stats()["running"] == 0, timeout=3.0)
        assert load(engine) == {"running": 0, "waiting": 0, "requests": 0}
        # The engine keeps serving afterwards.
        return tokens_of((await collect(engine.generate(request(prompt, request_id="r2", max_new_tokens=2))))[0])

    assert len(run_engine(fp32, body)) == 2


def test_closing_a_stream_stops_its_work(fp32: LoadedModel, chat_ids) -> None:
    """How a request is aborted (the client left, or every choice matched a stop string): its event stream
    is closed, and the engine drops it before the next step."""
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> None:
        stream = engine.generate(request(prompt, request_id="victim", max_new_tokens=500))
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_until(lambda: engine.stats()["running"] == 0 and engine.stats()["requests"] == 0, timeout=3.0)
        await stream.aclose()  # type: ignore[attr-defined]  # a second close is a no-op, not an error

    run_engine(fp32, body)


def test_full_queue_is_refused_eagerly_with_429(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> None:
        # A fills the whole batch (4 choices); B then has to wait; the queue (max 1) is full.
        a = engine.generate(request(prompt, request_id="a", n=4, temperature=1.0, seed=1, max_new_tokens=500))
        await anext(a)
        b = engine.generate(request(prompt, request_id="b", max_new_tokens=2))
        b_first = asyncio.ensure_future(anext(b))
        await wait_until(lambda: load(engine) == {"running": 4, "waiting": 1, "requests": 2})

        with pytest.raises(EngineError) as refused:
            engine.generate(request(prompt, request_id="c"))
        assert refused.value.status == 429
        assert refused.value.code == "queue_full"
        assert refused.value.retry_after is not None and refused.value.retry_after > 0

        # Once A goes away, B is admitted and served.
        await a.aclose()  # type: ignore[attr-defined]
        first_of_b = await b_first
        rest = [e async for e in b]
        assert [first_of_b, *rest][-1].finish_reason == "length"
        assert len(rest) == 1
        await wait_until(lambda: load(engine) == {"running": 0, "waiting": 0, "requests": 0})
        # And the queue has room again.
        await collect(engine.generate(request(prompt, request_id="c", max_new_tokens=1)))

    run_engine(fp32, body, max_queue=1)


def test_close_stops_the_thread(fp32: LoadedModel) -> None:
    async def body() -> None:
        engine = EmbeddedEngine(fp32, scheduler=SchedulerSettings(max_batch_size=4, prefill_chunk=16,
                                                                  prefix_cache_bytes=0))
        thread = engine._scheduler._thread
        assert thread.is_alive()
        started = time.monotonic()
        await engine.close()
        assert not thread.is_alive()
        assert time.monotonic() - started < 5

    asyncio.run(body())


def test_close_ends_in_flight_requests_and_refuses_new_ones(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body() -> None:
        engine = EmbeddedEngine(fp32, scheduler=SchedulerSettings(max_batch_size=4, prefill_chunk=16,
                                                                  prefix_cache_bytes=0))
        in_flight = engine.generate(request(prompt, max_new_tokens=500))
        await anext(in_flight)
        not_started = engine.generate(request(prompt, request_id="late", max_new_tokens=2))
        await engine.close()
        # The consumer is told, rather than left waiting for events that will never come.
        with pytest.raises(EngineError) as ended:
            async for _ in in_flight:
                pass
        assert ended.value.status == 503
        with pytest.raises(EngineError) as late:
            await anext(not_started)
        assert late.value.status == 503
        with pytest.raises(EngineError) as refused:
            engine.generate(request(prompt, request_id="after"))
        assert refused.value.status == 503 and refused.value.code == "engine_closed"
        assert engine.stats()["requests"] == 0

    asyncio.run(asyncio.wait_for(body(), TIMEOUT))



def test_only_the_scheduler_thread_computes_in_parallel(fp32: LoadedModel) -> None:
    """One OpenMP pool in the process: the scheduler thread gets its threads, threads that start using torch
    afterwards get one (several pools on few cores make libgomp sleep between ops: a slower decode)."""
    seen: dict[str, int] = {}

    async def main() -> None:
        engine = EmbeddedEngine(fp32, scheduler=SchedulerSettings(threads=2, prefix_cache_bytes=0))
        try:
            loop = asyncio.get_running_loop()
            done = asyncio.Event()

            def in_scheduler() -> None:
                seen["scheduler"] = torch.get_num_threads()
                loop.call_soon_threadsafe(done.set)

            engine._scheduler.call_soon(in_scheduler)  # runs within the idle loop's 0.5 s wait
            await asyncio.wait_for(done.wait(), TIMEOUT)
            seen["later"] = await asyncio.to_thread(torch.get_num_threads)
        finally:
            await engine.close()

    before = torch.get_num_threads()
    try:
        asyncio.run(main())
    finally:
        torch.set_num_threads(before)
    assert seen == {"scheduler": 2, "later": 1}


def test_one_requests_failures_leave_the_others_running(fp32: LoadedModel, decoder: Decoder, chat_ids,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefill that raises and a sampler that raises each end their own request with an EngineError; the
    request decoding beside them gets every token it would get alone, and the engine serves on."""
    from engines.embedded import scheduler

    good, bad_prefill, bad_sampling = chat_ids(LONG_QUESTION), chat_ids("Count to five."), chat_ids(QUESTION)
    real_prefill, real_pick = Decoder.prefill, scheduler.Sequence.pick
    marker = next(t for t in bad_prefill if t not in good and t not in bad_sampling)  # only that prompt has it

    def prefill(self: Decoder, cache: Any, token_ids: list[int], **kw: Any) -> torch.Tensor:
        if marker in token_ids:
            raise RuntimeError("simulated prefill fault")
        return real_prefill(self, cache, token_ids, **kw)

    def pick(self: Any, logits: torch.Tensor) -> Any:
        if self.group.req.request_id == "bad-sampling" and self.generated == 3:
            raise RuntimeError("simulated sampler fault")
        return real_pick(self, logits)

    monkeypatch.setattr(Decoder, "prefill", prefill)
    monkeypatch.setattr(scheduler.Sequence, "pick", pick)

    async def outcome(stream: AsyncIterator[EngineEvent]) -> list[int] | str:
        try:
            return tokens_of((await collect(stream))[0])
        except EngineError as exc:
            return str(exc)

    async def body(engine: EmbeddedEngine) -> list[list[int] | str]:
        streams = [engine.generate(request(good, request_id="good", max_new_tokens=12)),
                   engine.generate(request(bad_prefill, request_id="bad-prefill")),
                   engine.generate(request(bad_sampling, request_id="bad-sampling"))]
        results = await asyncio.gather(*(outcome(s) for s in streams))
        after = await outcome(engine.generate(request(good, request_id="after", max_new_tokens=12)))
        await wait_until(lambda: engine.stats()["running"] == 0)  # the last event may come before the step ends
        assert load(engine) == {"running": 0, "waiting": 0, "requests": 0}
        return [*results, after]

    good_alone = manual_greedy(decoder, good, 12)
    ran_beside, prefill_error, sampling_error, after = run_engine(fp32, body)
    assert ran_beside == good_alone and after == good_alone
    assert isinstance(prefill_error, str) and "simulated prefill fault" in prefill_error
    assert isinstance(sampling_error, str) and "simulated sampler fault" in sampling_error


def test_finished_requests_leave_no_reference_cycles(fp32: LoadedModel, chat_ids) -> None:
    """Every request's KV caches and inputs are freed as soon as it ends, by reference counting. A cycle
    (a choice pointing at its group and back) kept them until a rare full garbage collection: under load
    the heap grew by gigabytes."""
    import gc

    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine) -> None:
        await collect(engine.generate(request(prompt, n=2, temperature=1.0, seed=1, max_new_tokens=4)))
        stream = engine.generate(request(prompt, request_id="dropped", max_new_tokens=500))
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_until(lambda: engine.stats()["running"] == 0, timeout=3.0)

    gc.collect()
    gc.disable()
    try:
        run_engine(fp32, body)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("engines.")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


def test_admission_is_fair_across_tenants(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    """One tenant fills the batch and the queue; another tenant's request starts within one batch step (a
    choice of the first tenant is paused for it), and every paused choice later ends exactly as alone."""
    prompt = chat_ids(QUESTION)
    steps = 24

    async def body(engine: EmbeddedEngine) -> tuple[list[dict[int, list[EngineEvent]]], int, int]:
        def greedy(request_id: str, tenant: str) -> EngineRequest:
            req = request(prompt, request_id=request_id, max_new_tokens=steps, min_new_tokens=steps)
            req.tenant = tenant
            return req

        hogs = [engine.generate(greedy(f"a{i}", "key-a")) for i in range(6)]
        started = [asyncio.ensure_future(anext(s)) for s in hogs]
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        while engine._scheduler.batch_size < 2:  # key A holds the whole batch, four more of its requests wait
            await asyncio.sleep(0.01)
        submitted_at = engine.stats()["decode_steps"]
        stream = engine.generate(greedy("b0", "key-b"))
        first = await anext(stream)
        waited = engine.stats()["decode_steps"] - submitted_at
        rest = await collect(stream)
        outs = []
        for task, s in zip(started, hogs, strict=True):
            head = await task
            tail = await collect(s)
            outs.append({0: [head, *tail[0]]})
        return [*outs, {0: [first, *rest[0]]}], waited, len(first.token_ids)

    results, waited, _ = run_engine(fp32, body, max_batch_size=2, prefill_chunk=256)
    # The step in flight when it arrived, and the one it joined (first-come-first-served: 24 or more).
    assert waited <= 2, f"key B waited {waited} decode steps for its first token"
    alone = manual_greedy(decoder, prompt, steps)
    for choices in results:
        assert tokens_of(choices[0]) == alone


def test_a_grammar_that_gives_up_mid_reply_ends_in_an_error(fp32: LoadedModel, chat_ids) -> None:
    """llguidance stops after '{' for 700 optional properties (more items in a row than it allows): the request
    ends with a 400 schema_too_complex error, never a reply cut short and marked "stop" (issue 18)."""
    from tools.grammar import constraint, json_or_calls_grammar

    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(700)}}
    req = request(chat_ids("Give me JSON."), max_new_tokens=16)
    req.constraint = constraint(json_or_calls_grammar(schema, None, None, parallel=True))

    async def body(engine: EmbeddedEngine) -> tuple[list[EngineEvent], EngineError | None]:
        events: list[EngineEvent] = []
        try:
            async for event in engine.generate(req):
                events.append(event)
        except EngineError as exc:
            return events, exc
        return events, None

    events, error = run_engine(fp32, body)
    assert error is not None, f"ended normally: {[e.text for e in events]}"
    assert (error.status, error.code) == (400, "schema_too_complex")
    assert "2000" in str(error) and len(str(error)) < 500
    assert all(e.finish_reason is None for e in events)


def test_end_after_a_marker_when_ending_is_likely_enough(fp32: LoadedModel, decoder: Decoder, tokenizer,
                                                         chat_ids) -> None:
    """SamplingParams.end_after_ids / end_probability (the rule after a tool call's close marker): right after
    the marker the choice ends if the stop token holds at least end_probability; elsewhere nothing changes."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = chat_ids("Say just: yes")
    alone = manual_greedy(decoder, prompt, 12)
    with torch.inference_mode():  # the probability of ending after each greedy token
        cache = decoder.new_cache(len(prompt) + 16)
        decoder.prefill(cache, prompt)
        ending = [float(torch.softmax(decoder.decode([cache], [t])[0].float(), -1)[im_end]) for t in alone[:4]]
    at = 0  # a token after which ending is possible but not the model's first choice: the "marker"
    assert alone[0] != im_end and 1e-6 < ending[at] < 0.5, ending

    async def body(engine: EmbeddedEngine) -> list[list[int]]:
        outs = []
        for probability in (ending[at] / 2, min(1.0, ending[at] * 2), 0.0):
            req = request(prompt, max_new_tokens=12, stop_token_ids=(im_end,), end_after_ids=(alone[at],),
                          end_probability=probability)
            outs.append(tokens_of((await collect(engine.generate(req)))[0]))
        return outs

    ended, unlikely, off = run_engine(fp32, body)
    assert ended == [alone[at], im_end]
    assert unlikely == off and off[: at + 2] == alone[: at + 2] and off[at + 1] != im_end


def test_end_token_rule() -> None:
    from engines.base import SamplingParams
    from engines.embedded.sequence import _end_token

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(max_new_tokens=4, stop_token_ids=(2, 3), end_probability=0.2)
    assert _end_token(logits, params) == 2  # 0.15 + 0.05 >= 0.2: the likelier stop token
    assert _end_token(logits, SamplingParams(max_new_tokens=4, stop_token_ids=(2, 3), end_probability=0.25)) is None
    assert _end_token(logits, SamplingParams(max_new_tokens=4, stop_token_ids=(), end_probability=0.01)) is None
