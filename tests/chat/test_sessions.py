"""The session stage: continuation rules, exact-continuation prompts, and the next transcript."""

from __future__ import annotations

from typing import Any

import msgspec

from chat.sessions import SessionTurn, continue_prompt, merge, message_key, next_transcript, reply_message
from core.protocol import Message
from core.replies import CompletionTokensDetails, PromptTokensDetails, Usage
from store.records import Transcript


def msgs(*items: dict[str, Any]) -> list[Message]:
    return msgspec.convert(list(items), list[Message])


def builtins(messages: list[Message]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(m) for m in messages]


SYSTEM = {"role": "system", "content": "be brief"}
HI = {"role": "user", "content": "hi"}
YO = {"role": "assistant", "content": "yo", "reasoning_content": "say yo"}
AGAIN = {"role": "user", "content": "again"}


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city": "Oslo"}') -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def stored(*items: dict[str, Any], token_ids: list[int] | None = None) -> Transcript:
    return Transcript(owner="o", session_id="s", messages=builtins(msgs(*items)),
                      token_ids=token_ids if token_ids is not None else [1, 2, 3], turns=1)


# --- merge -------------------------------------------------------------------------------------------
# What the pipeline does with a turn: renders its messages, and continues history_ids when it has any. A new
# session and a rewrite look the same: the request's messages alone, nothing stored to continue.


def assert_alone(turn: SessionTurn, messages: list[Message]) -> None:
    """A new session or a rewrite: the request's messages, continuing nothing stored."""
    assert turn.messages is messages
    assert turn.history == [] and turn.history_ids == []


def assert_continues(turn: SessionTurn, old: Transcript, added: list[Message]) -> None:
    """The stored conversation with `added` after it, continuing the stored token ids."""
    assert builtins(turn.messages) == [*old.messages, *builtins(added)]
    assert builtins(turn.history) == old.messages
    assert turn.history_ids == old.token_ids


def test_new_session_keeps_messages() -> None:
    messages = msgs(SYSTEM, HI)
    assert_alone(merge(None, messages), messages)


def test_empty_stored_conversation_is_new() -> None:
    messages = msgs(HI)
    assert_alone(merge(Transcript(owner="o", session_id="s"), messages), messages)


def test_full_history() -> None:
    old = stored(SYSTEM, HI, YO, token_ids=[5, 6, 7])
    turn = merge(old, msgs(SYSTEM, HI, YO, AGAIN))
    assert_continues(turn, old, msgs(AGAIN))  # only what follows the stored conversation is added
    assert turn.history_ids == [5, 6, 7]


def test_full_history_ignores_reasoning_sent_back_or_not() -> None:
    old = stored(HI, YO)
    client_yo = {"role": "assistant", "content": "yo"}  # the client dropped reasoning_content
    turn = merge(old, msgs(HI, client_yo, AGAIN))
    assert_continues(turn, old, msgs(AGAIN))
    # The stored reply (with its reasoning) is what the turn continues from.
    assert turn.messages[1].reasoning_content == "say yo"
    assert message_key(builtins(msgs(YO))[0]) == message_key(builtins(msgs(client_yo))[0])


def test_tool_call_ids_do_not_matter_names_and_arguments_do() -> None:
    reply = {"role": "assistant", "content": None, "tool_calls": [call("call_server")]}
    result = {"role": "tool", "content": "sunny", "tool_call_id": "call_server"}
    old = stored(HI, reply)
    same = {"role": "assistant", "content": "", "tool_calls": [call("call_client")]}
    assert_continues(merge(old, msgs(HI, same, result)), old, msgs(result))

    other_name = {"role": "assistant", "content": None, "tool_calls": [call("call_server", name="get_time")]}
    other_args = {"role": "assistant", "content": None,
                  "tool_calls": [call("call_server", arguments='{"city": "Bergen"}')]}
    for changed in (other_name, other_args):
        new = msgs(HI, changed, result)
        assert_alone(merge(old, new), new)


def test_only_user_and_tool_messages_are_appended() -> None:
    old = stored(HI, YO, token_ids=[9, 8])
    new = msgs(AGAIN, {"role": "tool", "content": "x", "tool_call_id": "c1"})
    turn = merge(old, new)
    assert_continues(turn, old, new)  # all of the request's messages are added
    assert turn.history_ids == [9, 8]


def test_edited_earlier_message_rewrites() -> None:
    old = stored(SYSTEM, HI, YO)
    new = msgs(SYSTEM, {"role": "user", "content": "hello"}, YO, AGAIN)
    assert_alone(merge(old, new), new)


def test_new_system_prompt_rewrites() -> None:
    old = stored(SYSTEM, HI, YO)
    new = msgs({"role": "system", "content": "be verbose"}, HI, YO, AGAIN)
    assert_alone(merge(old, new), new)
    # A system prompt alone is not a "new messages only" request either.
    alone = msgs({"role": "system", "content": "x"}, AGAIN)
    assert_alone(merge(old, alone), alone)


def test_same_conversation_resent_rewrites() -> None:
    # docs/sessions.md: "the same conversation sent again with nothing new" is a rewrite.
    old = stored(HI, YO)
    new = msgs(HI, YO)
    assert_alone(merge(old, new), new)


def test_shorter_request_with_assistant_rewrites() -> None:
    old = stored(HI, YO, AGAIN, YO)
    new = msgs(HI, YO)
    assert_alone(merge(old, new), new)


# --- continue_prompt ---------------------------------------------------------------------------------

END = "<|im_end|>"
END_ID = 99


def tokenize(text: str) -> list[int]:
    return [ord(c) for c in text]


HISTORY_TEXT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
NEW_TEXT = "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
HISTORY_IDS = [1, 2, 3, END_ID]


def test_continue_prompt_appends_the_new_turns() -> None:
    ids = continue_prompt(HISTORY_IDS, HISTORY_TEXT, HISTORY_TEXT + NEW_TEXT, END, (END_ID,), tokenize)
    assert ids == HISTORY_IDS + tokenize("\n" + NEW_TEXT)


def test_continue_prompt_survives_a_re_rendered_earlier_turn() -> None:
    history = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>hm</think>yo<|im_end|>\n"
    rerendered = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    ids = continue_prompt(HISTORY_IDS, history, rerendered + NEW_TEXT, END, (END_ID,), tokenize)
    assert ids == HISTORY_IDS + tokenize("\n" + NEW_TEXT)


def test_continue_prompt_closes_a_cut_reply() -> None:
    cut = [1, 2, 3]  # the reply stopped at max_tokens: no end-of-turn id
    ids = continue_prompt(cut, HISTORY_TEXT, HISTORY_TEXT + NEW_TEXT, END, (END_ID,), tokenize)
    assert ids == cut + tokenize(END + "\n" + NEW_TEXT)


def test_continue_prompt_accepts_any_end_of_turn_id() -> None:
    ids = continue_prompt([1, 7], HISTORY_TEXT, HISTORY_TEXT + NEW_TEXT, END, (END_ID, 7), tokenize)
    assert ids == [1, 7] + tokenize("\n" + NEW_TEXT)


def test_continue_prompt_gives_up() -> None:
    full = HISTORY_TEXT + NEW_TEXT
    assert continue_prompt(HISTORY_IDS, HISTORY_TEXT, full, None, (END_ID,), tokenize) is None
    assert continue_prompt(HISTORY_IDS, HISTORY_TEXT, full, "", (END_ID,), tokenize) is None
    assert continue_prompt([], HISTORY_TEXT, full, END, (END_ID,), tokenize) is None
    # The history has no marker at all.
    assert continue_prompt(HISTORY_IDS, "no markers", full, END, (END_ID,), tokenize) is None
    # The full text has fewer markers than the history.
    assert continue_prompt(HISTORY_IDS, HISTORY_TEXT, "<|im_start|>user\nhi<|im_end|>\n", END, (END_ID,),
                           tokenize) is None


# --- reply_message / next_transcript -----------------------------------------------------------------


def test_reply_message_plain() -> None:
    assert reply_message("yo", None, []) == {"role": "assistant", "content": "yo"}
    assert reply_message("yo", "", []) == {"role": "assistant", "content": "yo"}


def test_reply_message_with_reasoning_and_calls() -> None:
    message = reply_message(None, "think", [("call_1", "get_weather", '{"city": "Oslo"}')])
    assert message == {"role": "assistant", "content": None, "reasoning_content": "think",
                       "tool_calls": [call("call_1")]}
    # It is a valid Message, and it matches itself as sent back by a client.
    assert msgspec.convert([message], list[Message])[0].tool_calls[0].function.name == "get_weather"


def usage(prompt: int, completion: int, cached: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
                 completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0))


def test_next_transcript_first_turn() -> None:
    turn = SessionTurn(messages=msgs(HI))
    reply = reply_message("yo", None, [])
    t = next_transcript("o", "s", None, turn, reply, [1, 2], usage(10, 3, 0))
    assert (t.owner, t.session_id, t.turns) == ("o", "s", 1)
    assert t.messages == [*builtins(msgs(HI)), reply]
    assert t.token_ids == [1, 2]
    assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens) == (10, 3, 0)


def test_next_transcript_adds_up() -> None:
    old = stored(HI, YO)
    old.prompt_tokens, old.completion_tokens, old.cached_tokens, old.turns = 10, 3, 0, 1
    old.created = 1000.0
    turn = merge(old, msgs(AGAIN))
    reply = reply_message("yo again", "again?", [])
    t = next_transcript("o", "s", old, turn, reply, [1, 2, 3, 4], usage(20, 5, 13))
    assert t.turns == 2
    assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens) == (30, 8, 13)
    assert t.created == 1000.0
    assert t.messages == [*old.messages, *builtins(msgs(AGAIN)), reply]
    assert all(isinstance(m, dict) for m in t.messages)
    assert t.token_ids == [1, 2, 3, 4]
