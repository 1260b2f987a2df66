"""ThinkingTracker: counts a choice's tokens while its reasoning section is open and says when to close it.

Pure unit tests: no model (the session fixtures of conftest.py are not requested).
"""

from __future__ import annotations

import pytest

from engines.base import ThinkingBudget
from engines.thinking import ThinkingTracker

CLOSE_IDS = (198, 151668, 271)


def tracker(max_tokens: int, close: str = "</think>") -> ThinkingTracker:
    return ThinkingTracker(ThinkingBudget(max_tokens=max_tokens, close_text=close, close_ids=CLOSE_IDS))


def test_starts_thinking_with_nothing_counted() -> None:
    t = tracker(10)
    assert t.thinking and not t.answering and not t.closing
    assert t.count == 0


def test_counts_every_token_until_the_close_then_stops() -> None:
    t = tracker(100)
    for i, text in enumerate(["Let", " me", " see", "\n"], start=1):
        t.feed(text)
        assert t.count == i and t.thinking
    t.feed("</think>")  # the closing token is counted
    assert t.count == 5
    assert t.answering and not t.thinking
    for text in ["\n\n", "The", " answer", "</think>", ""]:
        t.feed(text)
    assert t.count == 5


@pytest.mark.parametrize("pieces", [
    ["</", "think", ">"],
    ["<", "/", "t", "h", "i", "n", "k", ">"],
    ["x</th", "ink>y"],
    ["</think", ">\n\n"],
    ["a\n</", "", "think>"],  # a token with no text in between
])
def test_close_split_across_tokens_is_found(pieces: list[str]) -> None:
    t = tracker(100)
    t.feed("reasoning")
    for i, piece in enumerate(pieces):
        assert t.thinking, f"answering before the close was complete ({pieces[:i]})"
        t.feed(piece)
    assert t.answering
    assert t.count == 1 + len(pieces)


def test_close_inside_one_token_with_text_around_it() -> None:
    t = tracker(100)
    t.feed("done.</think>\n\nAnswer")
    assert t.answering and t.count == 1


def test_near_misses_are_not_the_close() -> None:
    t = tracker(100)
    for text in ["</thin", "k", "<think>", "</ think>", "</THINK>", "</think", " >"]:
        t.feed(text)
    assert t.thinking
    assert t.count == 7


def test_tail_does_not_grow_without_bound() -> None:
    t = tracker(10_000)
    for _ in range(1000):
        t.feed("some long reasoning text ")
    assert t.thinking and t.count == 1000
    assert len(t._tail) < len("</think>")
    t.feed("</think>")
    assert t.answering


def test_must_close_exactly_once_when_the_budget_is_spent() -> None:
    t = tracker(3)
    answers = []
    for text in ["a", "b", "c"]:
        answers.append(t.must_close())
        t.feed(text)
    assert answers == [False, False, False]
    assert t.count == 3
    assert t.must_close() is True  # the next token starts the inserted close
    assert t.closing
    assert t.must_close() is False  # never twice
    for text in ["\n", "</think>", "\n\n"]:  # the engine feeds the inserted close
        assert t.must_close() is False
        t.feed(text)
    assert t.answering
    assert t.must_close() is False


def test_budget_zero_closes_at_once() -> None:
    t = tracker(0)
    assert t.must_close() is True
    assert t.must_close() is False
    assert t.close_on_stop() is False  # already closing


def test_model_closing_by_itself_within_budget_never_must_close() -> None:
    t = tracker(3)
    for text in ["a", "</think>"]:
        assert t.must_close() is False
        t.feed(text)
    assert t.answering
    for text in ["x", "y", "z", "w"]:  # answer tokens do not spend the budget
        t.feed(text)
        assert t.must_close() is False
    assert t.count == 2


def test_close_on_stop_only_while_thinking_and_not_closing() -> None:
    t = tracker(10)
    t.feed("a")
    assert t.close_on_stop() is True  # a stop sampled in the section is replaced by the close
    assert t.closing
    assert t.close_on_stop() is False  # the close is already on its way
    assert t.must_close() is False


def test_close_on_stop_after_must_close_is_false() -> None:
    t = tracker(1)
    t.feed("a")
    assert t.must_close() is True
    assert t.close_on_stop() is False


def test_close_on_stop_when_answering_is_false() -> None:
    t = tracker(10)
    t.feed("</think>")
    assert t.close_on_stop() is False  # a stop in the answer is a real stop
    assert not t.closing


def test_count_bounded_by_budget_plus_the_inserted_close() -> None:
    budget = 5
    close_pieces = ["\n", "</think>", "\n\n"]
    t = tracker(budget)
    fed = 0
    while t.thinking:
        if t.must_close():
            for piece in close_pieces:
                t.feed(piece)
                fed += 1
            break
        t.feed("word ")
        fed += 1
    assert t.answering
    assert fed == budget + len(close_pieces)
    assert t.count == budget + 2  # counted up to the token that completes the close; the third is answer


def test_single_character_close_text() -> None:
    t = tracker(10, close="|")
    t.feed("ab")
    assert t.thinking
    t.feed("c|d")
    assert t.answering and t.count == 2


def test_answer_is_due_until_text_other_than_whitespace_follows_the_close() -> None:
    tracker = ThinkingTracker(ThinkingBudget(8, "</think>", (1, 2, 3)))
    tracker.feed("idea")
    assert not tracker.answer_due  # still thinking: nothing is due yet
    tracker.feed("</think>")
    assert tracker.answer_due
    tracker.feed("\n\n")
    tracker.feed("</think>")  # a repeated close is no answer either
    assert tracker.answer_due
    tracker.feed(" Yes")
    assert not tracker.answer_due


def test_answer_may_begin_in_the_closing_token() -> None:
    tracker = ThinkingTracker(ThinkingBudget(8, "</think>", (1, 2, 3)))
    tracker.feed("done</think>\n\nOK")
    assert tracker.answering and not tracker.answer_due
