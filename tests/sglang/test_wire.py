"""Unit tests of SGLang's `/generate` wire format: request bodies checked against SGLang's published contract
(sglang/api/v1/api_types.py from the installed wheel) and streamed replies built with it.

No server, no model: the tokenizer is a fake one whose tokens are fixed byte strings.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from engines.base import (
    Constraint,
    EngineError,
    EngineEvent,
    EngineRequest,
    RequestFacts,
    SamplingParams,
    TokenLogprob,
)
from engines.sglang.replies import ReplyReader, error_message, stream_error
from engines.sglang.wire import choice_rids, generate_body, sampling_params
from tests.sglang.standin import API

SGLANG_NO_TOP_K = 1073741824  # SamplingParams.top_k's default in SGLang's contract: top-k off


# -- a fake tokenizer ------------------------------------------------------------------------------------
class FakeTokenizer:
    """Each id stands for fixed bytes; id 0 is a special token. Bytes, so a character may span tokens."""

    PIECES: dict[int, bytes] = {
        0: b"<|end|>",
        1: b"Hel",
        2: b"lo",
        3: b" world",
        4: b"\xc3",  # first byte of "é"
        5: b"\xa9",  # second byte of "é"
        6: b"!",
    }
    SPECIAL = frozenset({0})

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        data = b"".join(self.PIECES[i] for i in ids if not (skip_special_tokens and i in self.SPECIAL))
        return data.decode("utf-8", errors="replace")


def test_fake_tokenizer() -> None:
    tok = FakeTokenizer()
    assert tok.decode([1, 2, 3]) == "Hello world"
    assert tok.decode([1, 0]) == "Hel"
    assert tok.decode([1, 0], skip_special_tokens=False) == "Hel<|end|>"
    assert tok.decode([4]) == "\ufffd"
    assert tok.decode([4, 5]) == "é"


# -- request bodies --------------------------------------------------------------------------------------
PROMPT = [101, 102, 103, 104]
GRAMMAR = 'start: "yes" | "no"'


def make_request(*, n: int = 1, seed: int | None = None, logprobs: bool = False, top_logprobs: int = 0,
                 constraint: Constraint | None = None, top_k: int = 0, min_new_tokens: int = 0,
                 stop_token_ids: tuple[int, ...] = (0, 7), logit_bias: dict[int, float] | None = None) -> EngineRequest:
    return EngineRequest(
        request_id="req-1", prompt_ids=list(PROMPT), n=n, logprobs=logprobs, top_logprobs=top_logprobs,
        constraint=constraint,
        sampling=SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, top_k=top_k, min_p=0.05,
                                frequency_penalty=0.1, presence_penalty=0.2, seed=seed,
                                stop_token_ids=stop_token_ids, min_new_tokens=min_new_tokens,
                                logit_bias=dict(logit_bias or {})))


def sglang_decode(body: dict[str, Any]) -> Any:
    """What SGLang makes of the body (raises its contract error, an HTTP 400 there, if it would refuse it)."""
    fields = set(API.GenerateRequest.__struct_fields__)
    # GenerateRequest ignores unknown top-level keys: make sure there are none, so nothing is silently dropped.
    assert set(body) <= fields, f"fields SGLang does not know: {set(body) - fields}"
    return API.decode_GenerateRequest(json.loads(json.dumps(body)))


CONTRACT_CASES = {
    "plain": dict(),
    "seed": dict(seed=7),
    "n3": dict(n=3),
    "n3-seed": dict(n=3, seed=42),
    "logprobs": dict(logprobs=True, top_logprobs=5),
    "n3-logprobs": dict(n=3, seed=1, logprobs=True, top_logprobs=2),
    "constraint": dict(constraint=Constraint(grammar=GRAMMAR, key="k")),
    "n3-constraint": dict(n=3, constraint=Constraint(grammar=GRAMMAR, key="k")),
    "top-k": dict(top_k=5),
    "min-new-tokens": dict(min_new_tokens=4),
    "no-stop-ids": dict(stop_token_ids=()),
    "logit-bias": dict(logit_bias={5: 100.0, 0: -100.0, 151_935: 0.5}),
    "n3-logit-bias-constraint": dict(n=3, logit_bias={6: -2.5}, constraint=Constraint(grammar=GRAMMAR, key="k")),
}


@pytest.mark.parametrize("kwargs", CONTRACT_CASES.values(), ids=CONTRACT_CASES.keys())
def test_body_accepted_by_sglang_contract(kwargs: dict[str, Any]) -> None:
    req = make_request(**kwargs)
    decoded = sglang_decode(generate_body(req, prompt=req.prompt_ids, image_urls=[]))
    assert decoded.stream is True
    assert decoded.max_thinking_tokens is None  # budgets are Lodestar's two calls (docs/deployment.md)
    assert decoded.text is None and decoded.image_data is None
    if req.n == 1:
        assert decoded.rid == "req-1"
        assert decoded.input_ids == PROMPT
        params = [decoded.sampling_params]
    else:
        assert decoded.input_ids == [PROMPT] * req.n
        params = decoded.sampling_params
    assert isinstance(params, list) and len(params) == req.n
    for p in params:
        assert isinstance(p, API.SamplingParams)
        assert p.max_new_tokens == 32
        assert p.temperature == pytest.approx(0.7)
        assert p.top_p == pytest.approx(0.9)
        assert p.min_p == pytest.approx(0.05)
        assert p.frequency_penalty == pytest.approx(0.1)
        assert p.presence_penalty == pytest.approx(0.2)
        assert p.stop_token_ids == list(req.sampling.stop_token_ids)
        assert p.skip_special_tokens is False
        assert p.top_k == (req.sampling.top_k or SGLANG_NO_TOP_K)
        assert p.min_new_tokens == req.sampling.min_new_tokens
        assert p.ebnf == (req.constraint.grammar if req.constraint else None)
        assert p.json_schema is None and p.regex is None
        # SGLang's shape: token ids as decimal strings -> floats ({} is its "no bias").
        assert p.logit_bias == {str(t): b for t, b in req.sampling.logit_bias.items()}
    seed = req.sampling.seed
    assert [p.sampling_seed for p in params] == [None if seed is None else seed + i for i in range(req.n)]
    if req.logprobs:
        assert decoded.return_logprob is True
        assert decoded.top_logprobs_num == req.top_logprobs
    else:
        assert decoded.return_logprob is None
        assert decoded.top_logprobs_num is None


def test_n3_body_has_distinct_rids_and_consecutive_seeds() -> None:
    req = make_request(n=3, seed=1000)
    body = generate_body(req, prompt=req.prompt_ids, image_urls=[])
    decoded = sglang_decode(body)
    assert isinstance(decoded.rid, list) and len(decoded.rid) == 3
    assert len(set(decoded.rid)) == 3
    assert decoded.rid == choice_rids(req)
    assert all(rid.startswith("req-1") for rid in decoded.rid)
    assert isinstance(decoded.sampling_params, list) and len(decoded.sampling_params) == 3
    assert [p.sampling_seed for p in decoded.sampling_params] == [1000, 1001, 1002]
    assert "max_thinking_tokens" not in body


def test_choice_rids() -> None:
    assert choice_rids(make_request(n=1)) == ["req-1"]
    rids = choice_rids(make_request(n=4))
    assert len(rids) == 4 and len(set(rids)) == 4


def test_top_k_zero_is_left_out() -> None:
    assert "top_k" not in sampling_params(make_request(top_k=0), 0)
    assert sampling_params(make_request(top_k=5), 0)["top_k"] == 5


def test_optional_sampling_fields_left_out_when_unset() -> None:
    params = sampling_params(make_request(), 0)
    assert "sampling_seed" not in params
    assert "min_new_tokens" not in params
    assert "ebnf" not in params
    assert "logit_bias" not in params
    assert params["stop_token_ids"] == [0, 7]


@pytest.mark.parametrize("seed", [2**63 - 2, 2**64 + 5, -3])
def test_large_and_negative_seeds_fit_sglang_int64(seed: int) -> None:
    req = make_request(n=3, seed=seed)
    decoded = sglang_decode(generate_body(req, prompt=req.prompt_ids, image_urls=[]))
    seeds = [p.sampling_seed for p in decoded.sampling_params]
    assert all(0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == 3


IMAGES = ["data:image/png;base64,AAAA", "data:image/png;base64,BBBB"]


def test_text_prompt_with_images_n1() -> None:
    req = make_request()
    text = "<|vision_start|><|image_pad|><|vision_end|>Describe this."
    body = generate_body(req, prompt=text, image_urls=IMAGES)
    decoded = sglang_decode(body)
    assert "input_ids" not in body
    assert decoded.text == text
    assert decoded.input_ids is None
    assert decoded.image_data == IMAGES
    assert decoded.rid == "req-1"


def test_text_prompt_with_images_n3() -> None:
    req = make_request(n=3, seed=5)
    text = "<|image_pad|> What is it?"
    body = generate_body(req, prompt=text, image_urls=IMAGES)
    decoded = sglang_decode(body)
    assert decoded.text == [text] * 3
    assert decoded.image_data == [IMAGES] * 3
    assert all(isinstance(row, list) for row in decoded.image_data)
    # each choice has its own image list (not one list object shared three times)
    assert len({id(row) for row in body["image_data"]}) == 3
    assert all(row is not IMAGES for row in body["image_data"])


def test_token_prompt_with_images() -> None:
    req = make_request()
    decoded = sglang_decode(generate_body(req, prompt=[1, 9, 2], image_urls=IMAGES[:1]))
    assert decoded.input_ids == [1, 9, 2]
    assert decoded.image_data == IMAGES[:1]


def test_no_image_data_without_images() -> None:
    req = make_request(n=3)
    body = generate_body(req, prompt="hi", image_urls=[])
    assert "image_data" not in body
    assert sglang_decode(body).text == ["hi"] * 3


# -- replies ---------------------------------------------------------------------------------------------
def logprob_of(token: int) -> float:
    return -0.25 * (token + 1)


def top_of(token: int) -> list[tuple[int, float]]:
    return [(token, logprob_of(token)), (token + 50, logprob_of(token) - 1.0)]


def reply(output_ids: list[int], completion_tokens: int, *, index: int | None = None, finish: Any = None,
          prompt_tokens: int = 11, cached_tokens: int = 4, logprobs_for: list[int] | None = None,
          text: str = "") -> bytes:
    """One `data:` payload as SGLang encodes it; `logprobs_for` are the tokens whose logprobs it carries."""
    entries = tops = None
    if logprobs_for is not None:
        entries = [API.LogprobEntry(logprob=logprob_of(t), token_id=t) for t in logprobs_for]
        tops = [[API.LogprobEntry(logprob=p, token_id=i) for i, p in top_of(t)] for t in logprobs_for]
    meta = API.GenerateMetaInfo(id="req-1", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                cached_tokens=cached_tokens, finish_reason=finish,
                                output_token_logprobs=entries, output_top_logprobs=tops or [])
    response = API.GenerateResponse(text=text, meta_info=meta, output_ids=output_ids, index=index)
    return json.dumps(API.encode_GenerateResponse(response)).encode()


def stream(steps: list[list[int]], finish: Any, *, incremental: bool, logprobs: bool = False,
           index: int | None = None) -> list[bytes]:
    """The chunks of one choice: `steps` are the new tokens of each chunk, the last chunk carries `finish`."""
    chunks, so_far = [], []
    for i, new in enumerate(steps):
        so_far = so_far + new
        ids = new if incremental else so_far
        chunks.append(reply(list(ids), len(so_far), index=index,
                            finish=finish if i == len(steps) - 1 else None,
                            logprobs_for=list(ids) if logprobs else None))
    return chunks


def read_all(reader: ReplyReader, chunks: list[bytes]) -> list[EngineEvent | None]:
    return [reader.read(c) for c in chunks]


STEPS = [[1], [2, 3], [6]]


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
def test_stream_events_carry_only_new_tokens(incremental: bool) -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    events = read_all(reader, stream(STEPS, API.FinishStop(matched=0), incremental=incremental))
    assert all(e is not None for e in events)
    assert [e.token_ids for e in events] == STEPS
    assert [e.text for e in events] == ["Hel", "lo world", "!"]
    assert [e.finish_reason for e in events] == [None, None, "stop"]
    assert all(e.index == 0 for e in events)
    assert [e.facts for e in events] == [RequestFacts(11, 4), None, RequestFacts(11, 4)]  # first and last only
    assert all(e.logprobs is None for e in events)
    assert reader.done


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
def test_stream_finish_length(incremental: bool) -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    events = read_all(reader, stream([[1, 2], [3]], API.FinishLength(length=3), incremental=incremental))
    assert [e.finish_reason for e in events] == [None, "length"]
    assert "".join(e.text for e in events) == "Hello world"
    assert reader.done


def test_cumulative_and_incremental_give_identical_events() -> None:
    steps = [[1], [4], [5, 2], [], [3, 0]]  # a character split over two chunks, an empty chunk, a special token
    for logprobs in (False, True):
        runs = []
        for incremental in (False, True):
            reader = ReplyReader(FakeTokenizer(), 1)
            runs.append(read_all(reader, stream(steps, API.FinishStop(matched=0), incremental=incremental,
                                                logprobs=logprobs)))
            assert reader.done
        assert runs[0] == runs[1]
        assert [e.token_ids for e in runs[0]] == steps
        assert [e.text for e in runs[0]] == ["Hel", "", "élo", "", " world"]


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
def test_payloads_that_arrive_together_are_one_event_per_choice(incremental: bool) -> None:
    """A batch (the relay behind the worker): each choice's consecutive payloads become one event carrying
    all their tokens, text and logprobs, the finish of the last and the facts; nothing else changes."""
    for logprobs in (False, True):
        a = stream(STEPS, API.FinishStop(matched=0), incremental=incremental, logprobs=logprobs, index=0)
        b = stream([[4], [5, 2], [3]], API.FinishLength(length=4), incremental=incremental, logprobs=logprobs,
                   index=1)
        arrival = [*a[:2], *b, a[2]]
        one_by_one = read_all(ReplyReader(FakeTokenizer(), 2), arrival)
        reader = ReplyReader(FakeTokenizer(), 2)
        batched = reader.read_batch(arrival)
        assert [(e.index, e.token_ids, e.finish_reason) for e in batched] == [
            (0, [1, 2, 3], None), (1, [4, 5, 2, 3], "length"), (0, [6], "stop")]
        for index in (0, 1):
            assert "".join(e.text for e in batched if e.index == index) == \
                "".join(e.text for e in one_by_one if e is not None and e.index == index)
        assert batched[0].facts == RequestFacts(11, 4) and batched[2].facts == RequestFacts(11, 4)
        if logprobs:
            assert [lp.token_id for e in batched for lp in e.logprobs or []] == [1, 2, 3, 4, 5, 2, 3, 6]
            assert [lp for e in batched for lp in e.logprobs or []] == \
                [lp for e in (one_by_one[i] for i in (0, 1, 2, 3, 4, 5)) if e for lp in e.logprobs or []]
        else:
            assert all(e.logprobs is None for e in batched)
        assert reader.done


def test_a_cumulative_worker_s_superseded_payloads_are_skipped_with_the_same_events() -> None:
    """Once payloads have shown cumulative output_ids, a batch reads only each run's last payload (and any
    that finishes a choice): the events are the same as reading every payload."""
    steps = [[1], [4], [5, 2], [], [3], [6], [2, 3]]
    for logprobs in (False, True):
        chunks = stream(steps, API.FinishStop(matched=0), incremental=False, logprobs=logprobs)
        every, skipping = ReplyReader(FakeTokenizer(), 1), ReplyReader(FakeTokenizer(), 1)
        expected = [every.read_batch(chunks[:2])]
        every.cumulative = False  # reads every payload: the reference
        expected.append(every.read_batch(chunks[2:]))
        first = skipping.read_batch(chunks[:2])
        assert skipping.cumulative  # learned from the second payload
        assert [first, skipping.read_batch(chunks[2:])] == expected

    incremental = ReplyReader(FakeTokenizer(), 1)
    incremental.read_batch(stream(steps, API.FinishStop(matched=0), incremental=True))
    assert not incremental.cumulative


def test_a_whole_cumulative_reply_in_one_batch_is_read_from_its_last_payloads() -> None:
    """A fast worker's whole reply arrives as the relay's first batch: cumulative output is recognised there
    (the last payload repeats the first's tokens) and only the payloads that count are read."""
    steps = [[1], [4], [5, 2], [], [3], [6], [2, 3]]
    for logprobs in (False, True):
        chunks = stream(steps, API.FinishStop(matched=0), incremental=False, logprobs=logprobs)
        reference = ReplyReader(FakeTokenizer(), 1)
        expected = [reference.read(c) for c in chunks]
        reader = ReplyReader(FakeTokenizer(), 1)
        [event] = reader.read_batch(chunks)
        assert reader.cumulative and reader.done
        assert event.token_ids == [t for e in expected if e for t in e.token_ids]
        assert event.text == "".join(e.text for e in expected if e)
        assert event.logprobs == ([lp for e in expected if e for lp in e.logprobs or []] if logprobs else None)
    for incremental_steps in (steps, [[], [], [1, 2], [3]]):  # empty payloads first: never taken for cumulative
        reader = ReplyReader(FakeTokenizer(), 1)
        [event] = reader.read_batch(stream(incremental_steps, API.FinishStop(matched=0), incremental=True))
        assert not reader.cumulative
        assert reader._mode_known == bool(incremental_steps[0])  # shown once, not checked again per batch
        assert event.token_ids == [t for step in incremental_steps for t in step]


def test_a_cumulative_payload_before_an_abort_still_leaves() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    reader.cumulative = True
    abort = API.FinishAbort(message="worker out of memory", status_code=503)
    events = reader.read_batch([reply([1], 1), reply([1, 2], 2), reply([1, 2, 3], 3, finish=abort)])
    assert [e.token_ids for e in events] == [[1, 2]]
    assert reader.failure is not None and reader.failure.status == 503


def test_an_error_in_a_batch_comes_after_the_events_before_it() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    abort = API.FinishAbort(message="worker out of memory", status_code=503)
    events = reader.read_batch([reply([1], 1), reply([1, 2], 2, finish=abort)])
    assert [e.token_ids for e in events] == [[1]]
    assert reader.failure is not None and reader.failure.status == 503


def test_finish_chunk_without_new_tokens() -> None:
    for incremental in (False, True):
        reader = ReplyReader(FakeTokenizer(), 1)
        events = read_all(reader, stream([[1, 2], []], API.FinishStop(matched=None), incremental=incremental))
        assert events[-1].token_ids == [] and events[-1].text == ""
        assert events[-1].finish_reason == "stop"
        assert events[-1].logprobs is None


def test_incomplete_character_flushed_at_finish() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    events = read_all(reader, stream([[1], [4]], API.FinishLength(length=2), incremental=False))
    assert [e.text for e in events] == ["Hel", "\ufffd"]


def test_reader_ignores_server_text() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    event = reader.read(reply([1, 2], 2, text="something else entirely"))
    assert event is not None and event.text == "Hello"


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
def test_logprobs_for_exactly_the_new_tokens(incremental: bool) -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    events = read_all(reader, stream(STEPS, API.FinishStop(matched=6), incremental=incremental, logprobs=True))
    for event, new in zip(events, STEPS, strict=True):
        assert event.logprobs == [TokenLogprob(token_id=t, logprob=logprob_of(t), top=top_of(t)) for t in new]


def test_logprobs_without_top_rows() -> None:
    entries = [API.LogprobEntry(logprob=-0.5, token_id=1), API.LogprobEntry(logprob=-1.5, token_id=2)]
    meta = API.GenerateMetaInfo(id="r", completion_tokens=2, output_token_logprobs=entries)
    data = json.dumps(API.encode_GenerateResponse(API.GenerateResponse(meta_info=meta, output_ids=[1, 2]))).encode()
    event = ReplyReader(FakeTokenizer(), 1).read(data)
    assert event is not None
    assert event.logprobs == [TokenLogprob(1, -0.5, []), TokenLogprob(2, -1.5, [])]


def test_logprobs_of_masked_tokens_are_minus_infinity() -> None:
    """What SGLang 0.5.23 sends for the tokens its grammar masks: OutputLogprobProcessor.compute_logprobs clamps
    their -inf to float32's lowest number; a -inf left unclamped reaches the wire as null (orjson). Both are
    read as -inf, which the responses leave out of top_logprobs (issue 19); a real logprob, however low, stays."""
    orjson = pytest.importorskip("orjson")
    assert orjson.dumps([float("-inf")]) == b"[null]"  # SGLang's dumps_json on an unclamped -inf
    clamped = -3.4028234663852886e38  # torch.finfo(torch.float32).min
    entries = [API.LogprobEntry(logprob=-0.5, token_id=1), API.LogprobEntry(logprob=-0.01, token_id=6)]
    tops = [[API.LogprobEntry(logprob=-0.5, token_id=1), API.LogprobEntry(logprob=-250.0, token_id=2),
             API.LogprobEntry(logprob=clamped, token_id=3)],
            [API.LogprobEntry(logprob=-0.01, token_id=6), API.LogprobEntry(logprob=None, token_id=4)]]
    meta = API.GenerateMetaInfo(id="r", completion_tokens=2, output_token_logprobs=entries, output_top_logprobs=tops)
    data = orjson.dumps(API.encode_GenerateResponse(API.GenerateResponse(meta_info=meta, output_ids=[1, 6])))
    assert b"-3.4028234663852886e+38" in data and b"[null,4,null]" in data
    event = ReplyReader(FakeTokenizer(), 1).read(data)
    assert event is not None
    inf = float("-inf")
    assert event.logprobs == [TokenLogprob(1, -0.5, [(1, -0.5), (2, -250.0), (3, inf)]),
                              TokenLogprob(6, -0.01, [(6, -0.01), (4, inf)])]


def test_two_choices_interleaved() -> None:
    reader = ReplyReader(FakeTokenizer(), 2)
    a = stream([[1], [2], [3]], API.FinishStop(matched=3), incremental=False, index=0)
    b = stream([[3], [6]], API.FinishLength(length=2), incremental=False, index=1)
    order = [a[0], b[0], a[1], b[1], a[2]]
    events = []
    for i, chunk in enumerate(order):
        events.append(reader.read(chunk))
        assert reader.done == (i == len(order) - 1)
    assert [(e.index, e.token_ids, e.text, e.finish_reason) for e in events] == [
        (0, [1], "Hel", None),
        (1, [3], " world", None),
        (0, [2], "lo", None),
        (1, [6], "!", "length"),
        (0, [3], " world", "stop"),
    ]


def test_chunk_after_finish_is_ignored() -> None:
    reader = ReplyReader(FakeTokenizer(), 2)
    assert reader.read(reply([1], 1, index=0, finish=API.FinishStop(matched=1))) is not None
    assert not reader.done
    assert reader.read(reply([1, 2], 2, index=0)) is None
    assert reader.read(reply([1, 2], 2, index=0, finish=API.FinishLength(length=2))) is None
    assert not reader.done
    event = reader.read(reply([2], 1, index=1, finish=API.FinishLength(length=1)))
    assert event is not None and event.index == 1 and event.token_ids == [2]
    assert reader.done


def test_missing_index_means_choice_zero() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    event = reader.read(reply([1], 1, index=None))
    assert event is not None and event.index == 0


# -- errors ----------------------------------------------------------------------------------------------
def test_abort_with_status() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    reader.read(reply([1], 1))
    with pytest.raises(EngineError) as info:
        reader.read(reply([1, 2], 2, finish=API.FinishAbort(message="prompt too long", status_code=400)))
    assert info.value.status == 400
    assert "prompt too long" in str(info.value)


@pytest.mark.parametrize("status_code", [None, 200, 999])
def test_abort_without_usable_status_is_503(status_code: int | None) -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    with pytest.raises(EngineError) as info:
        reader.read(reply([], 0, finish=API.FinishAbort(status_code=status_code)))
    assert info.value.status == 503
    assert str(info.value)  # a default message


def test_error_chunk_raises_with_its_status() -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    with pytest.raises(EngineError) as info:
        reader.read(json.dumps({"error": {"message": "boom", "code": 400}}).encode())
    assert info.value.status == 400
    assert info.value.code == "invalid_request"
    assert "boom" in str(info.value)


def test_error_chunk_built_with_sglang_types() -> None:
    error = API.GenerateStreamError(error=API.ErrorBody(message="bad grammar", code=422), index=0)
    reader = ReplyReader(FakeTokenizer(), 1)
    with pytest.raises(EngineError) as info:
        reader.read(json.dumps(API.encode_GenerateStreamError(error)).encode())
    assert info.value.status == 422
    assert "bad grammar" in str(info.value)


@pytest.mark.parametrize("payload", [{"message": "oops", "code": 500}, {"message": "oops"}, "oops"])
def test_error_chunk_server_side_is_502(payload: Any) -> None:
    reader = ReplyReader(FakeTokenizer(), 1)
    with pytest.raises(EngineError) as info:
        reader.read(json.dumps({"error": payload}).encode())
    assert info.value.status == 502
    assert info.value.code == "engine_error"
    assert "oops" in str(info.value)


def test_stream_error_helper() -> None:
    err = stream_error({"message": "m", "code": 413})
    assert err.status == 413 and "m" in str(err)
    assert stream_error("down").status == 502


@pytest.mark.parametrize("data", [b"not json", b"", b"[1, 2]", b'{"index": "zero"}', b'{"output_ids": "x"}'])
def test_unreadable_reply_is_502(data: bytes) -> None:
    with pytest.raises(EngineError) as info:
        ReplyReader(FakeTokenizer(), 1).read(data)
    assert info.value.status == 502
    assert info.value.code == "engine_protocol_error"


@pytest.mark.parametrize("index", [2, 5, -1])
def test_out_of_range_index_is_502(index: int) -> None:
    reader = ReplyReader(FakeTokenizer(), 2)
    with pytest.raises(EngineError) as info:
        reader.read(json.dumps({"text": "", "output_ids": [1], "index": index,
                                "meta_info": {"completion_tokens": 1}}).encode())
    assert info.value.status == 502
    assert info.value.code == "engine_protocol_error"


@pytest.mark.parametrize(("payload", "expected"), [
    ({"error": "text"}, "text"),
    ({"error": {"message": "m"}}, "m"),
    ({"error": {"detail": "d"}}, "d"),
    ({"message": "m2"}, "m2"),
    ({"detail": "d2"}, "d2"),
    ("plain string", "plain string"),
])
def test_error_message(payload: Any, expected: str) -> None:
    assert error_message(payload) == expected


# -- images ----------------------------------------------------------------------------------------------
def test_logit_bias_passes_sglangs_own_checks() -> None:
    """SGLang's SamplingParams (srt/sampling/sampling_params.py) reads the keys with int() and checks them against
    the vocabulary; the body must hold exactly what Lodestar validated, one copy per choice."""
    bias = {0: -100.0, 42: 100.0, 49_151: 1.5}
    req = make_request(n=2, seed=3, logit_bias=bias)
    decoded = sglang_decode(generate_body(req, prompt=req.prompt_ids, image_urls=[]))
    for p in decoded.sampling_params:
        assert {int(k): v for k, v in p.logit_bias.items()} == bias
        assert all(isinstance(v, float) for v in p.logit_bias.values())
        assert all(0 <= int(k) < 49_152 for k in p.logit_bias)  # SmolLM2's vocabulary: SGLang would accept it


def test_sse_batches_split_on_bytes_wherever_the_reads_cut() -> None:
    """The worker's stream read as bytes: payloads whole however the reads cut them, other lines and
    everything after [DONE] skipped, a last line without its newline kept; those a read completes together
    come as one batch."""
    import asyncio

    from engines.sglang.worker import sse_batches

    body = b'data: {"a": 1}\r\n\r\n: keep-alive\n\ndata: {"b": "\xc3\xa9"}\n\ndata: [DONE]\n\ndata: {"late": 1}\n\n'

    async def read(cuts: list[int], data: bytes = body) -> list[bytes]:
        async def pieces():
            start = 0
            for cut in [*cuts, len(data)]:
                yield [data[start:cut]]
                start = cut
        return [p async for batch in sse_batches(pieces()) for p in batch]

    expected = [b'{"a": 1}', b'{"b": "\xc3\xa9"}']
    assert asyncio.run(read([])) == expected

    async def batches(data: bytes) -> list[list[bytes]]:
        async def one_read():
            yield [data[:9], data[9:]]  # the HTTP chunks of one read
        return [batch async for batch in sse_batches(one_read())]
    assert asyncio.run(batches(body)) == [expected]  # one read, one batch
    for cut in range(1, len(body)):  # every place a read can end, UTF-8 characters split included
        assert asyncio.run(read([cut])) == expected, cut
    assert asyncio.run(read(list(range(1, len(body))))) == expected  # one byte per read
    assert asyncio.run(read([], b'data: {"x": 2}')) == [b'{"x": 2}']  # no final newline
