"""Per-choice token sampling: penalties, logit bias, temperature, top-k, top-p, min-p, seeded generators,
logprobs.

Log-probabilities are reported from the model's raw distribution: before penalties, logit bias and
temperature, after the masks the scheduler applies (a grammar's, stop tokens held back). Sampling uses the
adjusted one. docs/parameters.md#log-probabilities says why.
"""

from __future__ import annotations

import math
import os

import torch

from engines.base import SamplingParams, TokenLogprob


class ChoiceSampler:
    __slots__ = ("params", "generator", "counts", "want_logprob", "top_n", "bias")

    def __init__(self, params: SamplingParams, seed: int | None, vocab_size: int, want_logprob: bool,
                 top_n: int) -> None:
        self.params = params
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        penalised = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        self.counts = torch.zeros(vocab_size, dtype=torch.float32) if penalised else None
        self.want_logprob = want_logprob or top_n > 0
        self.top_n = top_n
        bias = params.logit_bias  # two small tensors, built once: one index_add per row
        self.bias = (torch.tensor(list(bias), dtype=torch.long),
                     torch.tensor(list(bias.values()), dtype=torch.float32)) if bias else None  # (ids, values)

    def sample(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """Pick the next token from one row of logits ([vocab], float32; -inf marks a banned token)."""
        p = self.params
        adjusted = logits
        if self.counts is not None:
            adjusted = adjusted - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0)
        if self.bias is not None:
            # Out of place (the row may be shared, and logprobs read it). A banned token stays -inf.
            adjusted = adjusted.index_add(0, *self.bias)
        if p.temperature <= 0.0:
            token = int(torch.argmax(adjusted))
        else:
            token = self._draw(adjusted / p.temperature)
        return self.take(logits, token)

    def take(self, logits: torch.Tensor, token: int) -> tuple[int, TokenLogprob | None]:
        """Record a token chosen by a rule rather than drawn (an ending), with its logprobs as sample()'s."""
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
        vocab = scaled.shape[-1]
        if not p.top_k and p.top_p >= 1.0 and p.min_p <= 0.0:  # plain sampling: no sort needed
            return self._pick(torch.softmax(scaled, dim=-1))
        if p.top_k and p.top_k < vocab:
            # top-k first; top-p and min-p then act on the renormalised top-k distribution
            values, indices = torch.topk(scaled, p.top_k)
            probs = torch.softmax(values, dim=-1)
        else:
            values, indices = self._candidates(scaled)
            probs = torch.exp(values - torch.logsumexp(scaled, dim=-1))  # true probabilities
        keep = probs.shape[-1]
        if p.top_p < 1.0:
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            cumulative = torch.cumsum(probs, dim=-1)
            keep = min(keep, int(torch.searchsorted(cumulative, torch.tensor([p.top_p]))[0]) + 1)
        if p.min_p > 0.0:
            keep = min(keep, max(1, int((probs >= p.min_p * probs[0]).sum())))
        return int(indices[self._pick(probs[:keep])])

    def _pick(self, weights: torch.Tensor) -> int:
        """Inverse-CDF draw from unnormalised weights (torch.multinomial is ~20x slower on 150k entries)."""
        cumulative = torch.cumsum(weights, dim=-1)
        u = torch.rand(1, generator=self.generator) * cumulative[-1]
        return min(int(torch.searchsorted(cumulative, u, right=True)[0]), weights.shape[-1] - 1)

    def _candidates(self, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The most likely tokens in order, enough of them to hold the top-p / min-p cut.

        Sorting the whole vocabulary (150k entries) costs milliseconds per token, and the cut almost always
        lies within the top few hundred: look there first, and sort everything only when it does not.
        """
        p = self.params
        vocab = scaled.shape[-1]
        log_total = torch.logsumexp(scaled, dim=-1)
        for k in (256, 4096):
            if k >= vocab:
                break
            values, indices = torch.topk(scaled, k)
            if p.top_p < 1.0:
                inside = float(torch.exp(torch.logsumexp(values, dim=-1) - log_total)) >= p.top_p
            else:  # min_p only: everything outside is below the k-th value
                inside = float(values[-1] - values[0]) < math.log(p.min_p)
            if inside:
                return values, indices
        return torch.sort(scaled, descending=True)
