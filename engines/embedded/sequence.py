"""The units the embedded scheduler batches: a Group (one engine request: its prompt and prefill state, then
its n choices) and a Sequence (one choice being decoded, and how it picks its next token)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.base import EngineEvent, EngineRequest, TokenLogprob
from engines.detokenizer import IncrementalDetokenizer
from engines.embedded.decoder import KVCache
from engines.embedded.grammar import GrammarState
from engines.embedded.lookup import PromptLookup
from engines.embedded.prefix_cache import Match
from engines.embedded.sampler import ChoiceSampler
from engines.thinking import ThinkingTracker

Emit = Callable[[EngineEvent | BaseException], None]


@dataclass(eq=False, slots=True)
class Group:
    """One engine request: its prompt cache while prefilling, then its n choices."""

    req: EngineRequest
    emit: Emit
    enqueued_at: float
    admitted_at: float = 0.0  # when it left the queue for a batch slot
    cache: KVCache | None = None
    prefilled: int = 0
    cached: int = 0  # prompt tokens taken from the prefix cache
    keys: list[int] = field(default_factory=list)  # the prompt's prefix-cache keys
    prefix: Match | None = None  # its cached prefix, locked in the prefix cache while it prefills
    aborted: bool = False
    # Vision prompts: M-RoPE positions of the whole prompt, image-token embeddings and how many are used.
    positions: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    image_rows_used: int = 0


@dataclass(eq=False, slots=True)
class Sequence:
    """One choice of a group being decoded: its KV cache, sampler, detokenizer, grammar and prompt lookup."""

    group: Group
    index: int
    cache: KVCache
    sampler: ChoiceSampler
    detok: IncrementalDetokenizer
    grammar: GrammarState | None = None
    thinking: ThinkingTracker | None = None
    lookup: PromptLookup | None = None  # drafts tokens for speculative decoding
    forced: deque[int] = field(default_factory=deque)  # inserted tokens still to feed (a reasoning close)
    last_forced: bool = False
    last_token: int = 0
    generated: int = 0

    def pick(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """The next token: an inserted one if any is due, else sampled (under the grammar, once the
        reasoning section, if any, is closed)."""
        thinking = self.thinking
        if thinking is not None and thinking.must_close():
            self.forced.extend(thinking.budget.close_ids)
        if self.forced:
            self.last_forced = True
            return self.forced.popleft(), None
        self.last_forced = False
        stops = self.group.req.sampling.stop_token_ids
        if stops and (self.generated < self.group.req.sampling.min_new_tokens or
                      (thinking is not None and thinking.answer_due)):
            logits = logits.clone()  # the row may be shared by a request's choices
            logits[list(stops)] = float("-inf")
        grammar = self.grammar if thinking is None or thinking.answering else None
        if grammar is not None:
            grammar.restrict(logits)
        sampling = self.group.req.sampling
        ending = _end_token(logits, sampling) if self.last_token in sampling.end_after_ids else None
        token, logprob = self.sampler.sample(logits) if ending is None else self.sampler.take(logits, ending)
        if grammar is not None:
            grammar.advance(token)
        if thinking is not None and token in stops and thinking.close_on_stop():
            # The turn would end inside the reasoning: close the reasoning instead, an answer follows.
            self.forced.extend(thinking.budget.close_ids)
            self.last_forced = True
            return self.forced.popleft(), None
        return token, logprob


def _end_token(logits: torch.Tensor, sampling: Any) -> int | None:
    """The likeliest stop token, when the stop tokens together hold at least end_probability (after a
    tool call: see SamplingParams.end_after_ids)."""
    stops = list(sampling.stop_token_ids)
    if not stops or sampling.end_probability <= 0:
        return None
    ending = torch.softmax(logits, dim=-1)[stops]
    if float(ending.sum()) < sampling.end_probability:
        return None
    return stops[int(torch.argmax(ending))]
