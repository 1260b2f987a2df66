"""The reasoning stage: request reading, the thinking decision and budget, and ReasoningSplitter, which keeps
reasoning apart from the answer whatever the chunking of the output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.families import FAMILIES, PROMPTED_THINK
from chat.reasoning import (
    EFFORT_SHARE,
    ReasoningAsk,
    ReasoningMode,
    ReasoningSplitter,
    ReasoningSyntax,
    decide,
    read_request,
)
from core.errors import APIError
from core.protocol import ChatCompletionRequest
from core.settings import ReasoningSettings
from engines.base import EngineEvent, RequestFacts, ThinkingBudget, TokenLogprob
from tests.chat.test_output import chunkings, split_at

OPEN, CLOSE = "<think>", "</think>"

# -- helpers ----------------------------------------------------------------------------------------


def event(text: str, *, ids: Sequence[int] | None = None, finish: str | None = None, forced: bool = False,
          logprobs: list[TokenLogprob] | None = None, prompt_tokens: int = 0, cached_tokens: int = 0,
          index: int = 0) -> EngineEvent:
    facts = RequestFacts(prompt_tokens, cached_tokens) if prompt_tokens else None
    return EngineEvent(index=index, token_ids=list(ids) if ids is not None else [1], text=text, logprobs=logprobs,
                       finish_reason=finish, facts=facts, forced=forced)  # type: ignore[arg-type]


def without_markers(text: str) -> str:
    """The text with every marker gone, including markers that removing another one joins."""
    while OPEN in text or CLOSE in text:
        text = text.replace(OPEN, "").replace(CLOSE, "")
    return text


def expected(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole output that starts inside the reasoning section."""
    if CLOSE not in text:
        return text.strip(), ""
    head, tail = text.split(CLOSE, 1)
    return head.strip(), without_markers(tail).lstrip()


def expected_reasoning_tokens(chunks: Sequence[str], forced: Sequence[bool], counts: Sequence[int]) -> int:
    """Sampled tokens, fed while the section was open, whose text overlaps the stripped reasoning body."""
    text = "".join(chunks)
    at = text.find(CLOSE)
    head = text if at < 0 else text[:at]
    body = head.strip()
    if not body:
        return 0
    start = len(head) - len(head.lstrip())
    end = start + len(body)
    total, offset = 0, 0
    for chunk, was_forced, n in zip(chunks, forced, counts, strict=True):
        s, e = offset, offset + len(chunk)
        offset = e
        if was_forced or CLOSE in text[:s]:
            continue
        if (s < end and e > start) if e > s else (start <= s < end):
            total += n
    return total


def run(chunks: Sequence[str], *, finish: str = "stop", forced: Sequence[bool] | None = None,
        counts: Sequence[int] | None = None) -> tuple[ReasoningSplitter, list[str], list[EngineEvent]]:
    """Feed one event per chunk (the last one finishing) and check the streaming properties on the way."""
    forced = forced if forced is not None else [False] * len(chunks)
    counts = counts if counts is not None else [1] * len(chunks)
    splitter = ReasoningSplitter(OPEN, CLOSE)
    reasonings: list[str] = []
    answers: list[EngineEvent] = []
    for i, (chunk, was_forced, n) in enumerate(zip(chunks, forced, counts, strict=True)):
        finish_reason = finish if i == len(chunks) - 1 else None
        reasoning, answer = splitter.feed(event(chunk, ids=range(100 * i, 100 * i + n), finish=finish_reason,
                                                forced=was_forced))
        assert CLOSE not in reasoning, (chunks, reasoning)
        assert OPEN not in answer.text and CLOSE not in answer.text, (chunks, answer.text)
        assert answer.finish_reason == finish_reason
        if not "".join(a.text for a in answers):  # nothing of the answer shown yet: no leading whitespace
            assert answer.text == answer.text.lstrip(), (chunks, answer.text)
        if reasoning:  # reasoning never follows answer text
            assert not any(a.text for a in answers), chunks
        reasonings.append(reasoning)
        answers.append(answer)
        assert splitter.text == "".join(reasonings)
    return splitter, reasonings, answers


def check(chunks: Sequence[str], *, finish: str = "stop", forced: Sequence[bool] | None = None,
          counts: Sequence[int] | None = None) -> ReasoningSplitter:
    """Run and compare with what the whole text says."""
    forced = forced if forced is not None else [False] * len(chunks)
    counts = counts if counts is not None else [1] * len(chunks)
    splitter, reasonings, answers = run(chunks, finish=finish, forced=forced, counts=counts)
    want_reasoning, want_answer = expected("".join(chunks))
    assert "".join(reasonings) == want_reasoning, chunks
    assert "".join(a.text for a in answers) == want_answer, chunks
    assert splitter.text == want_reasoning
    assert answers[-1].finish_reason == finish
    assert splitter.reasoning_tokens == expected_reasoning_tokens(chunks, forced, counts), chunks
    # A budget enforced on sampled tokens bounds what usage reports.
    at = "".join(chunks).find(CLOSE)
    before_close, offset = 0, 0
    for chunk, was_forced, n in zip(chunks, forced, counts, strict=True):
        if (at < 0 or offset < at + len(CLOSE)) and not was_forced:
            before_close += n
        offset += len(chunk)
    assert splitter.reasoning_tokens <= before_close
    return splitter


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.convert(body, ChatCompletionRequest)


INSERT = "\n</think>\n\n"
SYNTAX = ReasoningSyntax(OPEN, CLOSE, native=True, switch="enable_thinking", close_insert=INSERT, close_ids=(1, 2, 3))
NATIVE_NO_SWITCH = ReasoningSyntax(OPEN, CLOSE, native=True, switch=None, close_insert=INSERT, close_ids=(1, 2, 3))
PROMPTED = ReasoningSyntax(OPEN, CLOSE, native=False, switch=None, close_insert=INSERT, close_ids=(1, 2, 3))
PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# -- ReasoningSplitter: text ------------------------------------------------------------------------

CASES = [
    "I think.</think>The answer.",
    "</think>answer",  # the close at the very start: no reasoning
    "thought</think>",  # the close at the very end: no answer
    "no end marker at all",
    "</think>",
    "",
    "\n\nlead and\n\ntrail\n\n</think>\n\nthe answer\n",
    "  \n </think>  answer",  # whitespace-only reasoning
    "a</think>b</think>c<think>d",  # markers written again in the answer are dropped
    "a</think><think>",
    "a</think> <think> \n b",  # the whitespace a removed marker leaves in front of the answer goes too
    "a</think><thi</think>nk>b",  # removing one marker joins another
    "<think>again?</think>ok",  # an opening marker inside the reasoning is reasoning
    "x </thin k</think>y",  # near misses of the marker are text
    "a<</think>>b",
    "é ü 𝄞 pensée</think>réponse ¶",
    "one\n\n two\n</think>\n",
    "\n\n\n",
]


@pytest.mark.parametrize("finish", ["stop", "length"])
@pytest.mark.parametrize("text", CASES)
def test_reasoning_and_answer_whatever_the_chunking(text: str, finish: str) -> None:
    count = 0
    for chunks in chunkings(text) if text else [[""]]:
        check(chunks, finish=finish)
        count += 1
    assert count >= 1


def test_expected_reference_on_examples() -> None:
    # The reference the property checks use, pinned on a few texts.
    assert expected("I think.</think>The answer.") == ("I think.", "The answer.")
    assert expected("</think>answer") == ("", "answer")
    assert expected("thought</think>") == ("thought", "")
    assert expected("  no end  ") == ("no end", "")
    assert expected("a</think><thi</think>nk>b") == ("a", "b")


def test_close_split_across_events_is_found() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    steps = [splitter.feed(event(chunk)) for chunk in ["Hmm, ", "yes", "\n</th", "in", "k>\n\n", "Yes."]]
    assert [r for r, _ in steps] == ["Hmm,", " yes", "", "", "", ""]
    assert [e.text for _, e in steps] == ["", "", "", "", "", "Yes."]
    assert splitter.text == "Hmm, yes"


def test_held_back_text_that_is_not_the_marker_is_reasoning_after_all() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    assert splitter.feed(event("a \n</th"))[0] == "a"  # the whitespace and "</th" may precede a close
    assert splitter.feed(event("ere"))[0] == " \n</there"
    assert splitter.feed(event("", finish="length"))[0] == ""
    assert splitter.text == "a \n</there"


def test_output_ending_inside_the_reasoning_flushes_what_was_held() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    assert splitter.feed(event("still thinking </thi"))[0] == "still thinking"
    reasoning, answer = splitter.feed(event("", finish="length"))
    assert reasoning == " </thi"
    assert answer.text == "" and answer.finish_reason == "length"
    assert splitter.text == "still thinking </thi"


def test_partial_marker_in_the_answer_is_held_then_dropped_or_released() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    assert splitter.feed(event("r</think>A <thi"))[1].text == "A "
    assert splitter.feed(event("nk>B </"))[1].text == "B "
    assert splitter.feed(event("x", finish="stop"))[1].text == "</x"


def test_nested_markers_in_the_answer_are_held_until_they_resolve() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    assert splitter.feed(event("r</think>A<thi</thi"))[1].text == "A"  # both beginnings may still vanish
    assert splitter.feed(event("nk>"))[1].text == ""  # "<thi" + "nk>" now reads "<think>"...
    assert splitter.feed(event("nk>B", finish="stop"))[1].text == "B"  # ...which goes too


def test_other_markers() -> None:
    splitter = ReasoningSplitter("[THINK]", "[/THINK]")
    texts = [splitter.feed(event(chunk, finish="stop" if last else None))
             for chunk, last in [("plan [/TH", False), ("INK]\n[THINK]go", False), ("", True)]]
    assert "".join(r for r, _ in texts) == "plan"
    assert "".join(e.text for _, e in texts) == "go"


def test_long_texts_whatever_the_chunking() -> None:
    text = "First, think about it.\n\nThen more </thi thinking.\n</think>\n\nAnswer <think>with</think> markers."
    seen = 0
    for chunks in chunkings(text):
        check(chunks, finish="stop")
        seen += 1
    assert seen > len(text) * 2


PIECES = ["a", " ", "\n", "<", "</", "think", ">", CLOSE, OPEN, "é", "x y"]


@hypothesis_settings(max_examples=200, deadline=None)
@given(data=st.data(), pieces=st.lists(st.sampled_from(PIECES), max_size=14),
       finish=st.sampled_from(["stop", "length"]))
def test_property_random_texts_random_chunkings(data: st.DataObject, pieces: list[str], finish: str) -> None:
    text = "".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(text) - 1))) if len(text) > 1 else [])
    chunks = split_at(text, cuts) if text else [""]
    forced = data.draw(st.lists(st.booleans(), min_size=len(chunks), max_size=len(chunks)))
    counts = data.draw(st.lists(st.integers(0, 3), min_size=len(chunks), max_size=len(chunks)))
    check(chunks, finish=finish, forced=forced, counts=counts)


# -- ReasoningSplitter: events and tokens -----------------------------------------------------------


def test_answer_event_copies_the_event_fields() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    _, answer = splitter.feed(event("r</think>A", ids=[7], index=2, prompt_tokens=11, cached_tokens=4,
                                    finish="length"))
    assert (answer.index, answer.facts, answer.finish_reason) == (2, RequestFacts(11, 4), "length")
    assert answer.text == "A" and answer.token_ids == [7]
    assert answer.forced is False


def test_tokens_belong_to_the_answer_only_when_they_carry_answer_text_or_follow_it() -> None:
    lps = [[TokenLogprob(token_id=i, logprob=-0.1 * i)] for i in range(6)]
    splitter = ReasoningSplitter(OPEN, CLOSE)
    feeds = [("think", [0]), ("\n</think>", [1]), ("\n\n", [2]), ("Ans", [3]), ("\n", [4]), ("", [5])]
    outs = [splitter.feed(event(text, ids=ids, logprobs=lps[i], finish="stop" if i == 5 else None))[1]
            for i, (text, ids) in enumerate(feeds)]
    assert [o.token_ids for o in outs] == [[], [], [], [3], [4], [5]]
    assert [o.logprobs for o in outs] == [None, None, None, lps[3], lps[4], lps[5]]
    assert [o.text for o in outs] == ["", "", "", "Ans", "\n", ""]


def test_event_with_the_close_and_answer_text_owns_its_tokens() -> None:
    lp = [TokenLogprob(token_id=9, logprob=-1.0)]
    splitter = ReasoningSplitter(OPEN, CLOSE)
    reasoning, answer = splitter.feed(event("r</think>\n\nA", ids=[9], logprobs=lp))
    assert reasoning == "r"
    assert answer.text == "A" and answer.token_ids == [9] and answer.logprobs == lp


def test_event_with_only_markers_or_whitespace_after_the_close_owns_nothing() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    splitter.feed(event("r</think>"))
    _, answer = splitter.feed(event(" <think> ", ids=[5], logprobs=[TokenLogprob(5, -1.0)]))
    assert answer.text == "" and answer.token_ids == [] and answer.logprobs is None
    _, answer = splitter.feed(event("", ids=[6], finish="stop"))  # still before any answer text
    assert answer.token_ids == [] and answer.finish_reason == "stop"


def test_reasoning_tokens_one_token_per_word() -> None:
    tokens = ["Let", " me", " think", " about", " it", "\n", "</think>", "\n\n", "Answer", "."]
    splitter = check(tokens)
    assert splitter.text == "Let me think about it"
    assert splitter.reasoning_tokens == 5


def test_reasoning_tokens_are_counted_at_the_close() -> None:
    splitter = ReasoningSplitter(OPEN, CLOSE)
    for text in ["a", " b", " c", "</think>", "x"]:
        splitter.feed(event(text))
    assert splitter.reasoning_tokens == 3
    splitter.feed(event(" y", finish="stop"))
    assert splitter.reasoning_tokens == 3  # answer tokens are not reasoning


def test_forced_close_is_not_counted() -> None:
    chunks = ["Step", " one", " two", "\n", "</think>", "\n\n", "Done"]
    forced = [False, False, False, True, True, True, False]
    splitter = check(chunks, forced=forced)
    assert splitter.reasoning_tokens == 3
    assert splitter.text == "Step one two"


def test_whitespace_and_marker_tokens_are_not_reasoning() -> None:
    splitter = check(["\n", "\n", " x", " ", "\n", "</think>", "y"])
    assert splitter.reasoning_tokens == 1


def test_token_straddling_the_body_and_the_close_counts() -> None:
    splitter = check(["a", " b</think>", "c"])
    assert splitter.reasoning_tokens == 2


def test_multi_token_events_count_every_token() -> None:
    splitter = check(["abc", " de", "</think>", "f"], counts=[3, 2, 1, 1])
    assert splitter.reasoning_tokens == 5


def test_empty_text_tokens_count_inside_the_body_only() -> None:
    # "" at offset 0 (body start), "" at offset 1 (inside), "" at offset 3 (body end: outside).
    splitter = check(["", "a", "", " b", "", "</think>", "c"])
    assert splitter.reasoning_tokens == 4
    splitter = check(["\n", "", "a", "\n", "", "</think>"])  # body starts at 1: the "" there is inside
    assert splitter.reasoning_tokens == 2


def test_whitespace_only_reasoning_has_no_tokens() -> None:
    assert check([" ", "\n", "</think>", "A"]).reasoning_tokens == 0
    assert check([" ", "\n", ""], finish="length").reasoning_tokens == 0


def test_reasoning_tokens_when_the_output_ends_inside_the_reasoning() -> None:
    splitter = check(["one", " two", " three", "\n"], finish="length")
    assert splitter.reasoning_tokens == 3
    assert splitter.text == "one two three"


def test_budget_like_count_never_exceeds_sampled_tokens_before_the_close() -> None:
    text = "Let me weigh the options carefully.\n</think>\n\nOption B."
    words = text.split(" ")
    chunks = [w if i == 0 else " " + w for i, w in enumerate(words)]
    splitter = check(chunks)
    before = sum(1 for c in chunks[: next(i for i, c in enumerate(chunks) if CLOSE in c) + 1])
    assert 0 < splitter.reasoning_tokens <= before


# -- read_request -----------------------------------------------------------------------------------


def test_silent_request() -> None:
    assert read_request(request()) == ReasoningAsk(think=None)


def test_reasoning_effort_field() -> None:
    ask = read_request(request(reasoning_effort="low"))
    assert (ask.think, ask.effort, ask.max_tokens, ask.exclude) == (True, "low", None, False)


def test_reasoning_object_effort_and_max_tokens() -> None:
    ask = read_request(request(reasoning={"effort": "high", "max_tokens": 300}))
    assert (ask.think, ask.effort, ask.max_tokens) == (True, "high", 300)
    ask = read_request(request(reasoning={"enabled": True}))
    assert (ask.think, ask.effort, ask.max_tokens) == (True, None, None)
    ask = read_request(request(reasoning={"effort": "medium"}, reasoning_effort="medium"))  # they agree
    assert (ask.think, ask.effort) == (True, "medium")


@pytest.mark.parametrize("fields", [
    {"reasoning": {"enabled": False}},
    {"reasoning": {"effort": "none"}},
    {"reasoning": {"max_tokens": 0}},
    {"reasoning_effort": "none"},
    {"reasoning": {"enabled": False, "effort": "none", "max_tokens": 0}},
    {"reasoning": {"effort": "none"}, "reasoning_effort": "none"},
])
def test_thinking_off(fields: dict[str, Any]) -> None:
    ask = read_request(request(**fields))
    assert ask.think is False
    assert ask.effort is None  # "none" is not an effort to think at


@pytest.mark.parametrize("fields", [
    {"reasoning": {"enabled": False, "effort": "high"}},
    {"reasoning": {"effort": "none", "max_tokens": 5}},
    {"reasoning": {"enabled": False, "max_tokens": 5}},
    {"reasoning": {"enabled": True, "max_tokens": 0}},
    {"reasoning": {"enabled": True}, "reasoning_effort": "none"},
    {"reasoning": {"effort": "low"}, "reasoning_effort": "high"},
    {"reasoning": {"effort": "none"}, "reasoning_effort": "low"},
    {"reasoning": {"max_tokens": -1}},
])
def test_contradictions_and_bad_values_are_400(fields: dict[str, Any]) -> None:
    with pytest.raises(APIError) as info:
        read_request(request(**fields))
    assert info.value.status == 400
    assert info.value.code == "invalid_reasoning"


def test_error_names_the_param() -> None:
    params = {}
    for name, fields in [("disagree", {"reasoning": {"effort": "low"}, "reasoning_effort": "high"}),
                         ("negative", {"reasoning": {"max_tokens": -3}}),
                         ("off_and_on", {"reasoning": {"enabled": False, "effort": "high"}})]:
        with pytest.raises(APIError) as info:
            read_request(request(**fields))
        params[name] = info.value.param
    assert params == {"disagree": "reasoning_effort", "negative": "reasoning.max_tokens", "off_and_on": "reasoning"}


def test_exclude() -> None:
    assert read_request(request(reasoning={"effort": "low", "exclude": True})).exclude is True
    assert read_request(request(reasoning={"effort": "low", "exclude": False})).exclude is False
    assert read_request(request(reasoning_effort="low")).exclude is False
    ask = read_request(request(reasoning={"exclude": True}))  # think, but keep it out of the response
    assert (ask.think, ask.exclude) == (True, True)


# -- decide, finish_prompt, budget ------------------------------------------------------------------


def mode(syntax: ReasoningSyntax = SYNTAX, settings: ReasoningSettings | None = None, **fields: Any) -> ReasoningMode:
    result = decide(request(**fields), syntax, settings or ReasoningSettings())
    assert result is not None
    return result


def thinking_budget(m: ReasoningMode, max_new: int, prompt: str = PROMPT) -> ThinkingBudget | None:
    m.finish_prompt(prompt)
    return m.budget(max_new)


def test_decide_without_syntax_is_none_but_still_checks_the_request() -> None:
    assert decide(request(reasoning_effort="high"), None, ReasoningSettings()) is None
    assert decide(request(), None, ReasoningSettings()) is None
    with pytest.raises(APIError):
        decide(request(reasoning={"enabled": False, "effort": "high"}), None, ReasoningSettings())


@pytest.mark.parametrize("effort", ["xhigh", "high", "medium", "low", "minimal"])
@pytest.mark.parametrize("max_new", [1, 7, 100, 1000, 4096])
def test_effort_share_of_the_completion_budget(effort: str, max_new: int) -> None:
    budget = thinking_budget(mode(reasoning_effort=effort), max_new)
    assert budget is not None
    assert budget.max_tokens == max(1, int(EFFORT_SHARE[effort] * max_new))
    assert 1 <= budget.max_tokens <= max_new
    assert (budget.close_text, budget.close_ids, budget.close_insert) == (CLOSE, (1, 2, 3), INSERT)


def test_effort_shares_are_ordered() -> None:
    shares = [EFFORT_SHARE[e] for e in ["xhigh", "high", "medium", "low", "minimal"]]
    assert shares == sorted(shares, reverse=True)
    assert all(0 < s < 1 for s in shares)


def test_reasoning_max_tokens_wins_exactly() -> None:
    for fields, max_new in [({"reasoning": {"max_tokens": 37}}, 1000),
                            ({"reasoning": {"max_tokens": 37, "effort": "minimal"}}, 1000),
                            ({"reasoning": {"max_tokens": 5000}}, 100)]:
        budget = thinking_budget(mode(**fields), max_new)
        assert budget is not None
        assert budget.max_tokens == fields["reasoning"]["max_tokens"]


def test_silent_request_native_model_thinks_at_the_default_effort() -> None:
    m = mode(settings=ReasoningSettings(effort="high"))
    assert m.think is True
    budget = thinking_budget(m, 1000)
    assert budget is not None and budget.max_tokens == 800
    assert thinking_budget(mode(), 1000).max_tokens == 500  # type: ignore[union-attr]  # default: medium


def test_silent_request_does_not_think_when_the_default_is_none() -> None:
    m = mode(settings=ReasoningSettings(effort="none"))
    assert m.think is False
    assert m.finish_prompt(PROMPT) == PROMPT
    assert m.budget(1000) is None


def test_silent_request_prompted_model_does_not_think() -> None:
    m = mode(PROMPTED)
    assert m.think is False
    assert m.finish_prompt(PROMPT) == PROMPT
    assert m.section is False and m.budget(1000) is None


def test_prompted_model_thinks_when_asked() -> None:
    m = mode(PROMPTED, reasoning_effort="low")
    assert m.think is True
    assert m.finish_prompt(PROMPT) == PROMPT + "<think>\n"
    assert m.budget(1000) == ThinkingBudget(max_tokens=200, close_text=CLOSE, close_ids=(1, 2, 3),
                                            close_insert=INSERT)


def test_enabled_with_default_effort_none_thinks_at_medium() -> None:
    m = mode(settings=ReasoningSettings(effort="none"), reasoning={"enabled": True})
    assert m.think is True
    assert thinking_budget(m, 1000).max_tokens == int(EFFORT_SHARE["medium"] * 1000)  # type: ignore[union-attr]


def test_enabled_uses_the_default_effort() -> None:
    m = mode(settings=ReasoningSettings(effort="low"), reasoning={"enabled": True})
    assert thinking_budget(m, 1000).max_tokens == 200  # type: ignore[union-attr]


def test_explicit_off_overrides_the_default() -> None:
    m = mode(settings=ReasoningSettings(effort="xhigh"), reasoning={"enabled": False})
    assert m.think is False
    assert m.template_options == {"enable_thinking": False}


def test_template_options() -> None:
    assert mode(reasoning_effort="low").template_options == {"enable_thinking": True}
    assert mode(reasoning_effort="none").template_options == {"enable_thinking": False}
    assert mode().template_options == {"enable_thinking": True}
    assert mode(NATIVE_NO_SWITCH, reasoning_effort="low").template_options == {}
    assert mode(PROMPTED, reasoning_effort="low").template_options == {}


def test_exclude_is_carried_by_the_mode() -> None:
    assert mode(reasoning={"effort": "low", "exclude": True}).exclude is True
    assert mode(reasoning_effort="low").exclude is False


def test_finish_prompt_appends_the_opening_marker_when_thinking() -> None:
    m = mode(reasoning_effort="low")
    assert m.finish_prompt(PROMPT) == PROMPT + "<think>\n"
    assert m.section is True


@pytest.mark.parametrize("ending", ["<think>\n", "<think>", "<think>  \n\n"])
def test_finish_prompt_keeps_an_opening_the_template_wrote(ending: str) -> None:
    m = mode(reasoning_effort="low")
    assert m.finish_prompt(PROMPT + ending) == PROMPT + ending
    assert m.section is True
    assert m.budget(1000) is not None


def test_thinking_off_but_the_template_opened_the_section_gets_a_zero_budget() -> None:
    m = mode(NATIVE_NO_SWITCH, reasoning={"enabled": False})
    assert m.finish_prompt(PROMPT + "<think>\n") == PROMPT + "<think>\n"
    assert m.section is True
    assert m.budget(1000) == ThinkingBudget(max_tokens=0, close_text=CLOSE, close_ids=(1, 2, 3),
                                            close_insert=INSERT)


def test_thinking_off_and_the_template_closed_the_section() -> None:
    m = mode(reasoning_effort="none")
    closed = PROMPT + "<think>\n\n</think>\n\n"  # what a switch-aware template writes with the switch off
    assert m.finish_prompt(closed) == closed
    assert m.section is False
    assert m.budget(1000) is None


def test_thinking_off_not_opened_has_no_budget() -> None:
    m = mode(reasoning={"max_tokens": 0})
    assert m.finish_prompt(PROMPT) == PROMPT
    assert m.section is False and m.budget(1000) is None


# -- ReasoningSyntax.for_model ----------------------------------------------------------------------


class FakeTokenizer:
    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        self.calls.append((text, add_special_tokens))
        return {"input_ids": [ord(c) for c in text]}


QWEN3_TEMPLATE = "{% if enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}<|im_start|>assistant\n"


def test_for_model_native_with_switch() -> None:
    tokenizer = FakeTokenizer(QWEN3_TEMPLATE)
    syntax = ReasoningSyntax.for_model(FAMILIES["qwen3"], tokenizer, prompted=False)
    assert syntax == ReasoningSyntax(OPEN, CLOSE, native=True, switch="enable_thinking", close_insert=INSERT,
                                     close_ids=tuple(ord(c) for c in INSERT))
    assert tokenizer.calls == [("\n</think>\n\n", False)]


def test_for_model_native_template_without_the_switch() -> None:
    syntax = ReasoningSyntax.for_model(FAMILIES["qwen3"], FakeTokenizer("<think>{{ x }}"), prompted=False)
    assert syntax is not None and syntax.native is True and syntax.switch is None


def test_for_model_family_that_does_not_reason() -> None:
    assert ReasoningSyntax.for_model(FAMILIES["qwen2"], FakeTokenizer("<|im_start|>"), prompted=False) is None
    assert ReasoningSyntax.for_model(FAMILIES["qwen2"], FakeTokenizer(None), prompted=False) is None


def test_for_model_prompted_thinking() -> None:
    syntax = ReasoningSyntax.for_model(FAMILIES["qwen2"], FakeTokenizer("<|im_start|>"), prompted=True)
    assert syntax is not None
    assert (syntax.open, syntax.close) == PROMPTED_THINK
    assert syntax.native is False and syntax.switch is None
    assert syntax.close_insert == f"\n{PROMPTED_THINK[1]}\n\n"
    assert syntax.close_ids == tuple(ord(c) for c in syntax.close_insert)


def test_for_model_reasoning_family_whose_template_lacks_the_markers() -> None:
    # A reasoning family with a template that never writes the markers is treated as not reasoning...
    assert ReasoningSyntax.for_model(FAMILIES["qwen3"], FakeTokenizer("enable_thinking"), prompted=False) is None
    # ...or as prompted, with no switch even when the template has the keyword.
    syntax = ReasoningSyntax.for_model(FAMILIES["qwen3"], FakeTokenizer("enable_thinking"), prompted=True)
    assert syntax is not None and syntax.native is False and syntax.switch is None
