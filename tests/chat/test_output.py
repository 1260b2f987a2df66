"""ChoiceStream: stop strings never leak, whatever the chunking; logprobs travel with their text."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import pytest

from chat.output import ChoiceDelta, ChoiceStream
from engines.base import EngineEvent, TokenLogprob


def event(text: str, *, token_ids: Sequence[int] | None = None, finish: str | None = None,
          logprobs: list[TokenLogprob] | None = None) -> EngineEvent:
    ids = list(token_ids) if token_ids is not None else [len(text)]
    return EngineEvent(index=0, token_ids=ids, text=text, logprobs=logprobs,
                       finish_reason=finish)  # type: ignore[arg-type]


def lp(token_id: int, logprob: float = -0.5) -> TokenLogprob:
    return TokenLogprob(token_id=token_id, logprob=logprob)


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def chunkings(text: str, seed: int = 7) -> Iterator[list[str]]:
    """Every chunking for short texts; for long ones every 1- and 2-cut split, per character, and random."""
    inner = range(1, len(text))
    if len(text) <= 12:
        for r in range(len(text)):
            for cuts in itertools.combinations(inner, r):
                yield split_at(text, cuts)
        return
    yield [text]
    yield list(text)
    for r in (1, 2):
        for cuts in itertools.combinations(inner, r):
            yield split_at(text, cuts)
    rng = random.Random(seed)
    for _ in range(300):
        cuts = sorted(rng.sample(list(inner), rng.randint(1, len(text) - 1)))
        yield split_at(text, cuts)


def run(chunks: Sequence[str], stops: list[str], *, final: str | None = "length",
        keep_logprobs: bool = False) -> tuple[ChoiceStream, list[ChoiceDelta]]:
    """Feed one event per chunk, the last one carrying the engine's finish reason."""
    stream = ChoiceStream(0, stops, keep_logprobs)
    deltas = []
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        deltas.append(stream.feed(event(chunk, finish=final if last else None)))
    return stream, deltas


def expected_before_stop(text: str, stops: list[str]) -> str | None:
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else None


CASES = [
    # (text, stops)
    ("Hi END there", ["END"]),
    ("aaab", ["aab"]),  # self-overlapping stop: the first 'a' is real text
    ("xababcab", ["abc"]),
    ("say E and EN then END now", ["END"]),
    ("<|im|><|im_end|>tail", ["<|im_end|>"]),
    ("one\n\nUser: two", ["\n\nUser:"]),
    ("hello STOP then END", ["END", "STOP"]),  # earliest wins, whatever the order of the list
    ("hello END then STOP", ["STOP", "END"]),
    ("héllo wörld ¶ ünïcode ¶¶", ["¶¶"]),
    ("END at the start", ["END"]),
]


@pytest.mark.parametrize(("text", "stops"), CASES)
def test_stop_string_never_leaks_whatever_the_chunking(text: str, stops: list[str]) -> None:
    want = expected_before_stop(text, stops)
    assert want is not None
    count = 0
    for chunks in chunkings(text):
        stream = ChoiceStream(0, stops, keep_logprobs=False)
        shown = ""
        finish = None
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            delta = stream.feed(event(chunk, finish="length" if last else None))
            shown += delta.text
            # At every moment, what the user has seen is a prefix of the text before the stop.
            assert want.startswith(shown), (chunks, shown)
            if delta.finish_reason is not None:
                assert finish is None, "finished twice"
                finish = delta.finish_reason
        assert shown == want, chunks
        assert stream.full_text == want
        assert finish == "stop" and stream.finish_reason == "stop" and stream.finished
        count += 1
    assert count > 1


def test_stop_string_split_over_three_events() -> None:
    stream = ChoiceStream(0, ["<END>"], keep_logprobs=False)
    shown = []
    for chunk in ["Answer: 42", "<E", "N", "D>", " more text"]:
        delta = stream.feed(event(chunk))
        shown.append(delta.text)
    assert shown == ["Answer: 42", "", "", "", ""]
    assert stream.full_text == "Answer: 42"
    assert stream.finish_reason == "stop"


def test_earliest_of_several_stop_strings_wins_within_one_event() -> None:
    stream = ChoiceStream(0, ["zzz", "b", "cd"], keep_logprobs=False)
    delta = stream.feed(event("a cd b zzz"))
    assert delta.text == "a " and delta.finish_reason == "stop"


def test_no_stop_string_emits_everything_by_the_final_event() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    for chunks in ([text], list(text), split_at(text, [3, 10, 11, 30])):
        stream, deltas = run(chunks, ["\n\n", "STOP"])
        assert "".join(d.text for d in deltas) == text
        assert deltas[-1].finish_reason == "length"
        assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
        assert stream.full_text == text


def test_no_stops_configured_passes_text_straight_through() -> None:
    stream = ChoiceStream(0, [], keep_logprobs=False)
    assert stream.feed(event("E")).text == "E"
    assert stream.feed(event("ND")).text == "ND"
    assert stream.feed(event("", finish="stop")).finish_reason == "stop"
    assert stream.full_text == "END"


def test_empty_stop_strings_are_ignored() -> None:
    stream, deltas = run(["abc", "def"], ["", "zz"])
    assert "".join(d.text for d in deltas) == "abcdef"


def test_held_back_prefix_that_is_not_a_stop_is_emitted_later() -> None:
    stream = ChoiceStream(0, ["END"], keep_logprobs=False)
    assert stream.feed(event("The E")).text == "The "  # 'E' might begin END
    assert stream.feed(event("N")).text == ""  # 'EN' still might
    delta = stream.feed(event("GLISH"))  # it did not
    assert delta.text == "ENGLISH" and delta.finish_reason is None
    assert stream.full_text == "The ENGLISH"


@pytest.mark.parametrize("reason", ["length", "stop"])
def test_held_back_prefix_is_emitted_when_the_engine_finishes(reason: str) -> None:
    stream = ChoiceStream(0, ["END"], keep_logprobs=False)
    assert stream.feed(event("to the EN")).text == "to the "
    delta = stream.feed(event("", finish=reason))  # e.g. end-of-turn token or max_tokens
    assert delta.text == "EN"
    assert delta.finish_reason == reason
    assert stream.full_text == "to the EN"


def test_nothing_is_emitted_after_finishing() -> None:
    stream = ChoiceStream(0, ["END"], keep_logprobs=True)
    stream.feed(event("ok END", logprobs=[lp(1)]))
    late = stream.feed(event(" late", token_ids=[9], logprobs=[lp(9)], finish="length"))
    assert late.text == "" and late.finish_reason is None and late.logprobs == []
    assert stream.full_text == "ok " and stream.finish_reason == "stop"


def test_logprobs_are_released_with_their_text() -> None:
    stream = ChoiceStream(0, ["END"], keep_logprobs=True)
    d1 = stream.feed(event("Hel", token_ids=[1], logprobs=[lp(1)]))
    d2 = stream.feed(event("lo", token_ids=[2], logprobs=[lp(2)]))
    d3 = stream.feed(event("E", token_ids=[3], logprobs=[lp(3)]))  # held back: might start END
    d4 = stream.feed(event("x", token_ids=[4], logprobs=[lp(4)]))  # it did not
    d5 = stream.feed(event("!", token_ids=[5], logprobs=[lp(5)], finish="length"))
    assert (d1.text, [e.token_id for e in d1.logprobs]) == ("Hel", [1])
    assert (d2.text, [e.token_id for e in d2.logprobs]) == ("lo", [2])
    assert (d3.text, d3.logprobs) == ("", [])
    assert (d4.text, [e.token_id for e in d4.logprobs]) == ("Ex", [3, 4])
    assert (d5.text, [e.token_id for e in d5.logprobs]) == ("!", [5])
    assert [e.token_id for e in stream.logprobs] == [1, 2, 3, 4, 5]


def test_logprobs_of_tokens_that_only_produced_stop_text_are_dropped() -> None:
    stream = ChoiceStream(0, ["END"], keep_logprobs=True)
    deltas = [
        stream.feed(event("Hi", token_ids=[1], logprobs=[lp(1)])),
        stream.feed(event(" E", token_ids=[2], logprobs=[lp(2)])),  # ' ' is text, 'E' begins the stop
        stream.feed(event("N", token_ids=[3], logprobs=[lp(3)])),
        stream.feed(event("D", token_ids=[4], logprobs=[lp(4)])),
    ]
    assert "".join(d.text for d in deltas) == "Hi "
    assert [e.token_id for d in deltas for e in d.logprobs] == [1, 2]
    assert [e.token_id for e in stream.logprobs] == [1, 2]
    assert deltas[-1].finish_reason == "stop"
    # Every sampled token still counts for confidence_score (and for usage: tests/app/test_api_fake_engine.py::
    # test_usage_counts_every_generated_token).
    assert len(stream.all_logprobs) == 4


def test_stop_at_the_very_start_shows_no_text_and_no_logprobs() -> None:
    stream = ChoiceStream(0, ["###"], keep_logprobs=True)
    d1 = stream.feed(event("##", token_ids=[1], logprobs=[lp(1)]))
    d2 = stream.feed(event("# after", token_ids=[2], logprobs=[lp(2)]))
    assert d1.text == d2.text == ""
    assert d1.logprobs == d2.logprobs == []
    assert d2.finish_reason == "stop"
    assert stream.full_text == "" and stream.logprobs == []


def test_logprobs_not_kept_unless_asked_but_still_counted() -> None:
    stream = ChoiceStream(0, [], keep_logprobs=False)
    delta = stream.feed(event("a", token_ids=[1], logprobs=[lp(1, -0.1)]))
    assert delta.logprobs == []
    stream.feed(event("b", token_ids=[2], logprobs=[lp(2, -0.2)], finish="length"))
    assert stream.logprobs == []
    assert stream.all_logprobs == [-0.1, -0.2]


def test_token_with_empty_text_keeps_its_logprob() -> None:
    # A token that completes no character yet (half of a UTF-8 sequence) yields text "".
    stream = ChoiceStream(0, [], keep_logprobs=True)
    d1 = stream.feed(event("", token_ids=[1], logprobs=[lp(1)]))
    d2 = stream.feed(event("é", token_ids=[2], logprobs=[lp(2)], finish="length"))
    released = [e.token_id for d in (d1, d2) for e in d.logprobs]
    assert released == [1, 2]
    assert stream.full_text == "é"


def test_events_of_several_tokens_or_none() -> None:
    """Token counts are the response's (usage: tests/app/test_api_fake_engine.py::
    test_usage_counts_every_generated_token); the text does not depend on them."""
    stream = ChoiceStream(0, ["END"], keep_logprobs=False)
    stream.feed(event("a", token_ids=[1]))
    stream.feed(event("bc", token_ids=[2, 3]))  # several tokens in one event
    stream.feed(event("", token_ids=[4]))  # a token with no text yet
    stream.feed(event("E", token_ids=[5]))  # held back
    stream.feed(event("ND", token_ids=[6, 7]))
    assert stream.full_text == "abc" and stream.finish_reason == "stop"
