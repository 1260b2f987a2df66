"""Prompt lookup: draft tokens for speculative decoding by finding the sequence's last few tokens earlier in
its own prompt or output, and proposing what followed them there.

Agents copy a lot: tool-call arguments quote the prompt, an edited file repeats the original, JSON repeats
keys, a long session quotes earlier turns. The drafts cost no model; the decoder checks them all in one pass
(a decode step is bound by reading the weights, so a few extra rows cost little), and the scheduler keeps
the drafted tokens only while they equal what the sampler picks (scheduler.py): the output is unchanged.

One PromptLookup per decoding choice; it owns the choice's token history (prompt + output so far) and its
draft length, which adapts to how many drafted tokens were kept, so that text that does not repeat costs
at most a one-token draft (two rows, about the price of one on the CPUs measured: docs/speculative.md).
"""

from __future__ import annotations

import numpy as np

MIN_MATCH = 2  # the shortest run of last tokens looked up (one token matches too often by chance)
MAX_MATCH = 4  # the longest; longer runs are tried first


class PromptLookup:
    __slots__ = ("history", "length", "limit", "span", "drafted", "kept")

    def __init__(self, prompt_ids: list[int], max_draft: int) -> None:
        self.history = np.empty(max(64, 2 * len(prompt_ids)), dtype=np.int64)
        self.history[: len(prompt_ids)] = prompt_ids
        self.length = len(prompt_ids)
        self.limit = max_draft
        self.span = 1  # this choice's current draft length: one token until drafts prove right
        self.drafted = 0  # totals, for the engine's figures
        self.kept = 0

    def append(self, token: int) -> None:
        if self.length == self.history.shape[0]:
            self.history = np.concatenate([self.history, np.empty_like(self.history)])
        self.history[self.length] = token
        self.length += 1

    def draft(self, room: int) -> list[int]:
        """Up to min(span, room) tokens that followed the latest earlier occurrence of the longest suffix
        (MAX_MATCH down to MIN_MATCH tokens) of the history; none when the suffix occurs nowhere earlier."""
        count = min(self.span, room)
        end = self.length
        if count <= 0 or end <= MIN_MATCH:
            return []
        h = self.history[:end]
        for size in range(min(MAX_MATCH, end - 1), MIN_MATCH - 1, -1):
            suffix = h[end - size :]
            starts = np.flatnonzero(h[: end - size] == suffix[0])  # an occurrence followed by a token
            for offset in range(1, size):
                if not starts.size:
                    break
                starts = starts[h[starts + offset] == suffix[offset]]
            if starts.size:
                follow = int(starts[-1]) + size
                return h[follow : follow + count].tolist()
        return []

    def verified(self, drafted: int, kept: int) -> None:
        """`kept` of `drafted` tokens equalled the picks: lengthen the draft after a full run, shorten it
        after a miss (additive increase, as transformers' assisted generation does)."""
        self.drafted += drafted
        self.kept += kept
        if kept == drafted:
            self.span = min(self.limit, self.span + 2)
        else:
            self.span = max(1, self.span - 1)
