"""Engine-side enforcement of a reasoning budget (EngineRequest.thinking), for engines that can insert
tokens mid-generation.

The pipeline decides the budget and the markers; this only counts a choice's generated tokens while its
reasoning section is open and says when the engine must close it.
"""

from __future__ import annotations

from engines.base import ThinkingBudget


class ThinkingTracker:
    __slots__ = ("budget", "count", "answering", "answer_started", "closing", "_tail")

    def __init__(self, budget: ThinkingBudget) -> None:
        self.budget = budget
        self.count = 0  # tokens generated while the section was open, the closing one included
        self.answering = False  # the close marker has been generated: the answer is being written
        self.answer_started = False  # text besides whitespace (and repeated close markers) followed the close
        self.closing = False  # the close was inserted and is being fed
        self._tail = ""  # end of the text so far, long enough to find a close marker split across tokens

    @property
    def thinking(self) -> bool:
        return not self.answering

    @property
    def answer_due(self) -> bool:
        """The section is closed and the answer has not begun: the turn must not end yet."""
        return self.answering and not self.answer_started

    def must_close(self) -> bool:
        """Whether the next token must start the inserted close; true at most once."""
        if self.answering or self.closing or self.count < self.budget.max_tokens:
            return False
        self.closing = True
        return True

    def close_on_stop(self) -> bool:
        """A stop token was sampled; whether to replace it with the close (only inside the section)."""
        if self.answering or self.closing:
            return False
        self.closing = True
        return True

    def feed(self, text: str) -> None:
        """Account one more token of the choice, with the text it produced."""
        if self.answering:
            if not self.answer_started:
                self._tail += text
                self.answer_started = bool(self._tail.replace(self.budget.close_text, "").strip())
            return
        self.count += 1
        close = self.budget.close_text
        tail = self._tail + text
        if close in tail:
            self.answering = True
            self._tail = tail.split(close, 1)[1]  # the answer may begin in the same token
            self.answer_started = bool(self._tail.replace(close, "").strip())
        else:
            self._tail = tail[-(len(close) - 1):] if len(close) > 1 else ""
