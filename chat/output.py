"""Per-choice output stage: engine events in, OpenAI-ready deltas out.

One small object per choice holds all of its streaming state. It applies stop strings without ever
emitting the beginning of a stop string that then matches, and releases each token's logprob together
with the text the token produced.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from core.text import partial_suffix
from engines.base import EngineEvent, TokenLogprob


@dataclass(slots=True)
class ChoiceDelta:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class ChoiceStream:
    __slots__ = ("index", "stops", "_pending", "_emitted", "_received", "_tokens", "finished", "finish_reason",
                 "text", "logprobs", "all_logprobs", "keep_logprobs", "stop_token_ids")

    def __init__(self, index: int, stops: list[str], keep_logprobs: bool,
                 stop_token_ids: tuple[int, ...] = ()) -> None:
        self.index = index
        self.stop_token_ids = stop_token_ids  # the end token that stops a choice is not part of its output
        self.stops = [s for s in stops if s]
        self._pending = ""  # received text not yet emitted (may hold a stop-string prefix)
        self._emitted = 0  # characters emitted so far
        self._received = 0  # characters received so far
        self._tokens: deque[tuple[int, TokenLogprob]] = deque()  # (start offset, entry) not yet released
        self.finished = False
        self.finish_reason: str | None = None
        self.text: list[str] = []  # everything emitted, for the non-streaming response
        self.logprobs: list[TokenLogprob] = []  # released entries, for the response
        self.all_logprobs: list[float] = []  # every sampled token's logprob, for confidence_score
        self.keep_logprobs = keep_logprobs

    def feed(self, event: EngineEvent) -> ChoiceDelta:
        """Consume one engine event; return what may be shown now."""
        if self.finished:
            return ChoiceDelta()
        entries = event.logprobs
        if entries and event.finish_reason == "stop" and entries[-1].token_id in self.stop_token_ids:
            entries = entries[:-1]
        if entries:
            for entry in entries:
                self.all_logprobs.append(entry.logprob)
                if self.keep_logprobs:
                    self._tokens.append((self._received, entry))
        self._pending += event.text
        self._received += len(event.text)

        cut = self._find_stop()
        if cut is not None:
            return self._finish(self._pending[:cut], "stop")
        if event.finish_reason is not None:
            reason = "stop" if event.finish_reason == "stop" else event.finish_reason
            return self._finish(self._pending, reason)
        hold = self._held_back()
        return self._release(self._pending[: len(self._pending) - hold])

    def _find_stop(self) -> int | None:
        best = None
        for stop in self.stops:
            at = self._pending.find(stop)
            if at != -1 and (best is None or at < best):
                best = at
        return best

    def _held_back(self) -> int:
        """Length of the longest suffix of the pending text that could begin a stop string."""
        return partial_suffix(self._pending, *self.stops)

    def _release(self, text: str, final: bool = False) -> ChoiceDelta:
        self._pending = self._pending[len(text):]
        self._emitted += len(text)
        if text:
            self.text.append(text)
        released = []
        # A token is shown once any of its text is shown; at the end, every remaining token is.
        while self._tokens and (final or self._tokens[0][0] < self._emitted or
                                (self._tokens[0][0] == self._emitted and not self._pending)):
            released.append(self._tokens.popleft()[1])
        self.logprobs.extend(released)
        return ChoiceDelta(text=text, logprobs=released)

    def _finish(self, text: str, reason: str) -> ChoiceDelta:
        if reason == "stop" and self._find_stop() is not None:
            # Tokens that only produced stop-string text are not shown.
            limit = self._emitted + len(text)
            self._tokens = deque(t for t in self._tokens if t[0] < limit)
        delta = self._release(text, final=True)
        self._pending = ""
        self.finished = True
        self.finish_reason = delta.finish_reason = reason
        return delta

    def end(self, reason: str) -> ChoiceDelta:
        """Finish now, from outside (e.g. a repeated tool call): unreleased text is dropped."""
        self._pending = ""
        self._tokens.clear()
        self.finished = True
        self.finish_reason = reason
        return ChoiceDelta(finish_reason=reason)

    @property
    def full_text(self) -> str:
        return "".join(self.text)
