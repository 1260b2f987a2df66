"""Per-choice token sampling: penalties, temperature, top-k, top-p, min-p, seeded generators, logprobs.

Log-probabilities are reported from the model's raw distribution (before penalties and temperature), as
OpenAI does; sampling uses the adjusted one.
"""

from __future__ import annotations

import os

import torch

from engines.base import SamplingParams, TokenLogprob


class ChoiceSampler:
    __slots__ = ("params", "generator", "counts", "want_logprob", "top_n")

    def __init__(self, params: SamplingParams, seed: int | None, vocab_size: int, want_logprob: bool,
                 top_n: int) -> None:
        self.params = params
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        penalised = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        self.counts = torch.zeros(vocab_size, dtype=torch.float32) if penalised else None
        self.want_logprob = want_logprob or top_n > 0
        self.top_n = top_n

    def sample(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """Pick the next token from one row of logits ([vocab], float32)."""
        p = self.params
        adjusted = logits
        if self.counts is not None:
            adjusted = adjusted - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0)
        if p.temperature <= 0.0:
            token = int(torch.argmax(adjusted))
        else:
            token = self._draw(adjusted / p.temperature)
        if self.counts is not None:
            self.counts[token] += 1.0
        if not self.want_logprob:
            return token, None
        logprobs = torch.log_softmax(logits, dim=-1)
        entry = TokenLogprob(token_id=token, logprob=float(logprobs[token]))
        if self.top_n:
            values, indices = torch.topk(logprobs, self.top_n)
            entry.top = list(zip(indices.tolist(), values.tolist(), strict=True))
        return token, entry

    def _draw(self, scaled: torch.Tensor) -> int:
        p = self.params
        if p.top_k and p.top_k < scaled.shape[-1]:
            values, indices = torch.topk(scaled, p.top_k)
        else:
            values, indices = torch.sort(scaled, descending=True)
        probs = torch.softmax(values, dim=-1)
        keep = probs.shape[-1]
        if p.top_p < 1.0:
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            cumulative = torch.cumsum(probs, dim=-1)
            keep = min(keep, int(torch.searchsorted(cumulative, torch.tensor([p.top_p]))[0]) + 1)
        if p.min_p > 0.0:
            keep = min(keep, max(1, int((probs >= p.min_p * probs[0]).sum())))
        probs = probs[:keep]
        choice = int(torch.multinomial(probs, 1, generator=self.generator))
        return int(indices[choice])
