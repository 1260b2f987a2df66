"""prompt_truncate_len (a provider's extension): keep a long conversation's prompt within a token limit on purpose.

The oldest whole turns after the system prompt are dropped until the rendered prompt fits. The system
prompt (leading system and developer messages) and the latest user turn always stay, and a tool result
is never separated from the assistant message that called it: a turn is a user message with everything
that follows it up to the next user message.
"""

from __future__ import annotations

from collections.abc import Callable

from core.errors import APIError
from core.protocol import DeveloperMessage, Message, SystemMessage, UserMessage


def turns(messages: list[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(the leading system messages, the rest cut into turns that each start at a user message)."""
    head = 0
    while head < len(messages) and isinstance(messages[head], SystemMessage | DeveloperMessage):
        head += 1
    groups: list[list[Message]] = []
    for message in messages[head:]:
        if isinstance(message, UserMessage) or not groups:
            groups.append([])
        groups[-1].append(message)
    return messages[:head], groups


def truncate(messages: list[Message], limit: int, count: Callable[[list[Message]], int]) -> list[Message]:
    """The messages without their oldest turns, so that `count` (prompt tokens) is at most `limit`.

    `count` renders and tokenizes; it is called O(log turns) times (the fewest turns to drop is found by
    bisection: dropping more never makes a prompt longer).
    """
    if count(messages) <= limit:
        return messages
    system, groups = turns(messages)

    def keep_from(first: int) -> list[Message]:
        return [*system, *(m for group in groups[first:] for m in group)]

    low, high = 1, len(groups) - 1  # the last turn always stays
    if high < low or count(keep_from(high)) > limit:
        raise APIError(400, f"The system prompt and the latest turn alone are longer than prompt_truncate_len "
                       f"({limit} tokens)", param="prompt_truncate_len", code="context_length_exceeded")
    while low < high:  # the smallest number of dropped turns that fits
        middle = (low + high) // 2
        if count(keep_from(middle)) <= limit:
            high = middle
        else:
            low = middle + 1
    return keep_from(low)
