"""Prompt-lookup speculative decoding: the drafts (PromptLookup), and the engine's output with drafting on
against the same engine with it off, on the real SmolLM2-135M (fp32)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.settings import SchedulerSettings
from engines.base import EngineEvent, EngineRequest, SamplingParams
from engines.embedded.engine import EmbeddedEngine
from engines.embedded.loader import LoadedModel
from engines.embedded.lookup import PromptLookup

COPY_TEXT = ("The harbour master keeps a ledger of every ship that enters the bay: its name, its cargo, "
             "the hour it dropped anchor and the hour it left. On stormy nights he writes by candlelight.")


# -- drafts ----------------------------------------------------------------------------------------------
def test_draft_continues_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 8, 3, 4], max_draft=8)
    lookup.span = 3
    # "3 4" occurs at 2 and 7; "2 3 4" is not the suffix (the suffix is "8 3 4"), so the latest "3 4" wins.
    assert lookup.draft(room=10) == [6, 7, 8]
    lookup.append(6)  # now "3 4 6" occurs earlier (at 7): the longer match decides
    assert lookup.draft(room=10) == [7, 8, 3]


def test_draft_is_empty_without_a_match_and_bounded_by_room() -> None:
    lookup = PromptLookup([10, 11, 12, 13, 14], max_draft=8)
    assert lookup.draft(room=8) == []  # "13 14" occurs nowhere earlier
    lookup.append(10)
    assert lookup.draft(room=8) == []  # one token ("10") is too short a match
    lookup.append(11)
    lookup.span = 8
    assert lookup.draft(room=2) == [12, 13]
    assert lookup.draft(room=0) == []


def test_draft_never_proposes_past_the_history() -> None:
    lookup = PromptLookup([5, 6, 5, 6], max_draft=8)
    lookup.span = 8
    assert lookup.draft(room=8) == [5, 6]  # "5 6" at 0 is followed by the history's last two tokens


def test_span_grows_after_full_runs_and_shrinks_after_misses() -> None:
    lookup = PromptLookup([1, 2, 3], max_draft=6)
    assert lookup.span == 1  # one token until drafts prove right
    lookup.verified(1, 1)
    lookup.verified(3, 3)
    lookup.verified(5, 5)
    assert lookup.span == 6  # never above max_draft
    for _ in range(10):
        lookup.verified(2, 0)
    assert lookup.span == 1  # never below one
    assert (lookup.drafted, lookup.kept) == (29, 9)


def test_history_grows_past_its_first_capacity() -> None:
    lookup = PromptLookup([], max_draft=4)
    for token in range(200):
        lookup.append(token % 7)
    assert lookup.length == 200
    assert lookup.history[:200].tolist() == [t % 7 for t in range(200)]
    lookup.span = 4
    assert lookup.draft(room=4) == [4, 5, 6, 0]  # the history ends "... 1 2 3"


# -- the engine with and without drafts --------------------------------------------------------------------
def generate(loaded: LoadedModel, requests: list[EngineRequest], lookup_tokens: int,
             context_length: int | None = None) -> tuple[list[Any], dict]:
    """Run the requests concurrently on a fresh engine; their events per choice, and the engine's figures."""

    async def main() -> tuple[list[Any], dict]:
        engine = EmbeddedEngine(loaded, context_length=context_length, scheduler=SchedulerSettings(
            max_batch_size=5, prefill_chunk=256, prefix_cache_bytes=0, lookup_tokens=lookup_tokens))
        try:
            async def one(req: EngineRequest) -> dict[int, list[EngineEvent]]:
                by_choice: dict[int, list[EngineEvent]] = {}
                async for event in engine.generate(req):
                    by_choice.setdefault(event.index, []).append(event)
                return by_choice

            results = await asyncio.wait_for(asyncio.gather(*(one(r) for r in requests)), 120)
            return list(results), engine.stats()
        finally:
            await engine.close()

    return asyncio.run(main())


def summary(by_choice: dict[int, list[EngineEvent]]) -> list[tuple[list[int], str | None]]:
    return [([t for e in events for t in e.token_ids], events[-1].finish_reason)
            for _, events in sorted(by_choice.items())]


@pytest.fixture(scope="module")
def fp32(smollm: LoadedModel) -> LoadedModel:
    return LoadedModel(smollm.model, smollm.tokenizer, "smollm2-135m-instruct", ("smollm2",))


def copy_request(chat_ids, request_id: str, **sampling: Any) -> EngineRequest:
    prompt = chat_ids(f"Repeat this text exactly, word for word:\n\n{COPY_TEXT}")
    sampling.setdefault("max_new_tokens", 48)
    return EngineRequest(request_id=request_id, prompt_ids=prompt, sampling=SamplingParams(**sampling))


def test_drafts_change_no_token_and_save_decode_steps(fp32: LoadedModel, chat_ids) -> None:
    """Greedy, seeded sampling, n=2 and a reply cut at max_tokens, in one batch: the same tokens and finish
    reasons with drafting on as off, in fewer decode steps."""
    def requests() -> list[EngineRequest]:
        sampled = copy_request(chat_ids, "sampled", temperature=0.8, top_p=0.95, seed=7)
        two = copy_request(chat_ids, "two", temperature=1.0, seed=3)
        two.n = 2
        penalised = copy_request(chat_ids, "penalised", temperature=0.0, frequency_penalty=0.3,
                                 presence_penalty=0.2, min_new_tokens=40, logit_bias={260: 2.0, 28: -1.5})
        return [copy_request(chat_ids, "greedy", temperature=0.0), sampled, two,
                copy_request(chat_ids, "cut", temperature=0.0, max_new_tokens=13), penalised]

    plain, plain_stats = generate(fp32, requests(), lookup_tokens=0)
    drafted, stats = generate(fp32, requests(), lookup_tokens=8)
    assert [summary(r) for r in drafted] == [summary(r) for r in plain]
    greedy_tokens = summary(drafted[0])[0][0]
    assert len(greedy_tokens) == 48 and summary(drafted[3])[0] == (greedy_tokens[:13], "length")
    assert plain_stats["lookup_drafted_tokens"] == 0
    assert stats["lookup_kept_tokens"] >= 24, stats
    assert stats["decode_steps"] < plain_stats["decode_steps"] * 0.8, (stats, plain_stats)


def test_drafts_keep_logprobs_stops_and_grammar(fp32: LoadedModel, chat_ids, tokenizer) -> None:
    """Per-token logprobs, a stop token and a JSON grammar see every kept drafted token as if decoded alone."""
    from tools.grammar import constraint, json_or_calls_grammar

    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def requests() -> list[EngineRequest]:
        logprobs = copy_request(chat_ids, "logprobs", temperature=0.0)
        logprobs.logprobs, logprobs.top_logprobs = True, 2
        stop = copy_request(chat_ids, "stop", temperature=0.0,
                            stop_token_ids=tuple(tokenizer.encode(" ledger")))
        structured = copy_request(chat_ids, "json", temperature=0.0, max_new_tokens=64)
        structured.constraint = constraint(json_or_calls_grammar(schema, None, None, parallel=True))
        return [logprobs, stop, structured]

    plain, _ = generate(fp32, requests(), lookup_tokens=0)
    drafted, stats = generate(fp32, requests(), lookup_tokens=8)
    assert [summary(r) for r in drafted] == [summary(r) for r in plain]
    plain_lp = [lp for e in plain[0][0] for lp in e.logprobs or []]
    drafted_lp = [lp for e in drafted[0][0] for lp in e.logprobs or []]
    assert len(drafted_lp) == len(plain_lp) == 48
    for ours, theirs in zip(drafted_lp, plain_lp, strict=True):
        assert ours.token_id == theirs.token_id and abs(ours.logprob - theirs.logprob) < 1e-3
        assert [t for t, _ in ours.top] == [t for t, _ in theirs.top]
    assert summary(drafted[1])[0][1] == "stop"
    text = "".join(e.text for e in drafted[2][0])
    assert text.startswith("{") and '"text"' in text, text
    assert stats["lookup_kept_tokens"] > 0


def test_a_draft_cut_by_the_context_length_ends_the_reply_as_without_drafts(fp32: LoadedModel, chat_ids) -> None:
    """Near the end of the context the draft shrinks to what still fits: the reply ends at the same token,
    with "length", as without drafts."""
    prompt_tokens = len(copy_request(chat_ids, "x").prompt_ids)
    plain, _ = generate(fp32, [copy_request(chat_ids, "edge", temperature=0.0)], 0, prompt_tokens + 20)
    drafted, stats = generate(fp32, [copy_request(chat_ids, "edge", temperature=0.0)], 8, prompt_tokens + 20)
    assert summary(drafted[0]) == summary(plain[0])
    tokens, finish = summary(drafted[0])[0]
    assert finish == "length" and len(tokens) == 20  # the prompt and the reply fill the context
    assert stats["lookup_kept_tokens"] > 0


def test_a_failing_draft_falls_back_to_plain_decoding(fp32: LoadedModel, chat_ids, monkeypatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Drafting is only an offer: if it raises, the choice decodes one token per step, to the same reply."""
    plain, _ = generate(fp32, [copy_request(chat_ids, "plain", temperature=0.0)], 0)

    def broken(self: PromptLookup, room: int) -> list[int]:
        raise RuntimeError("lookup broke")

    monkeypatch.setattr(PromptLookup, "draft", broken)
    drafted, stats = generate(fp32, [copy_request(chat_ids, "plain", temperature=0.0)], 8)
    assert summary(drafted[0]) == summary(plain[0])
    assert stats["lookup_drafted_tokens"] == 0
    assert "prompt lookup failed" in caplog.text
