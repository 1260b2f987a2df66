"""prompt_truncate_len: the oldest whole turns go first; the system prompt and the latest turn stay; a tool
result stays with its call."""

from __future__ import annotations

import msgspec
import pytest

from chat.truncate import truncate, turns
from core.errors import APIError
from core.protocol import Message


def convo(*dicts: dict) -> list[Message]:
    return msgspec.convert(list(dicts), list[Message])


def words(messages: list[Message]) -> int:
    """A stand-in tokenizer: 2 tokens per message plus one per word."""
    return sum(2 + len((m.content or "").split()) for m in messages)  # type: ignore[union-attr]


SYSTEM = {"role": "system", "content": "be brief"}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "result words here"}


def test_turns_start_at_user_messages_and_keep_tool_results_with_their_call() -> None:
    system, groups = turns(convo(SYSTEM, {"role": "user", "content": "a"}, CALL, RESULT,
                                 {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}))
    assert len(system) == 1
    assert [[m.__struct_config__.tag for m in g] for g in groups] == [["user", "assistant", "tool", "assistant"],
                                                                     ["user"]]


def test_fitting_prompts_are_untouched() -> None:
    messages = convo(SYSTEM, {"role": "user", "content": "hi"})
    assert truncate(messages, 100, words) is messages


def test_oldest_turns_go_first_and_the_fewest_are_dropped() -> None:
    history = [SYSTEM]
    for i in range(10):
        history += [{"role": "user", "content": f"question {i} " + "x " * 8}, {"role": "assistant", "content": "ok"}]
    history.append({"role": "user", "content": "latest"})
    messages = convo(*history)
    for limit in (40, 60, 100, 150):
        kept = truncate(messages, limit, words)
        assert words(kept) <= limit
        assert kept[0].content == "be brief" and kept[-1].content == "latest"
        assert kept[1:] == messages[len(messages) - len(kept) + 1:]  # a suffix of whole turns
        dropped_one_less = messages[:1] + messages[len(messages) - len(kept) - 1:]
        assert words(dropped_one_less) > limit  # no turn was dropped that did not need to be


def test_a_tool_result_is_never_separated_from_its_call() -> None:
    messages = convo(SYSTEM, {"role": "user", "content": "old " * 20}, {"role": "user", "content": "use f"},
                     CALL, RESULT, {"role": "user", "content": "and now?"})
    kept = truncate(messages, 30, words)
    tags = [m.__struct_config__.tag for m in kept]
    assert "tool" not in tags or tags[tags.index("tool") - 1] == "assistant"


def test_too_long_even_alone_is_a_400_naming_the_field() -> None:
    messages = convo(SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "word " * 50})
    with pytest.raises(APIError) as caught:
        truncate(messages, 10, words)
    assert caught.value.status == 400 and caught.value.param == "prompt_truncate_len"
