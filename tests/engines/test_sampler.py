"""ChoiceSampler on hand-made logits: greedy, seeds, top-k/top-p/min-p, penalties and logprobs."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from engines.base import SamplingParams
from engines.embedded.sampler import ChoiceSampler

VOCAB = 64
DRAWS = 400


def make(seed: int | None = 0, *, logprobs: bool = False, top_n: int = 0, vocab: int = VOCAB,
         **params) -> ChoiceSampler:
    return ChoiceSampler(SamplingParams(max_new_tokens=DRAWS, **params), seed, vocab, logprobs, top_n)


def flat_logits(seed: int = 1, vocab: int = VOCAB) -> torch.Tensor:
    """A flat-ish distribution: every token has a real chance."""
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 0.3


def from_probs(*probs: float, vocab: int = VOCAB) -> torch.Tensor:
    """Logits whose softmax puts `probs` on tokens 0.. and (next to) nothing elsewhere."""
    logits = torch.full((vocab,), -1e4)
    logits[: len(probs)] = torch.log(torch.tensor(probs))
    return logits


def draw(sampler: ChoiceSampler, logits: torch.Tensor, times: int = DRAWS) -> list[int]:
    return [sampler.sample(logits)[0] for _ in range(times)]


def test_temperature_zero_is_argmax() -> None:
    for seed in range(5):
        logits = flat_logits(seed)
        sampler = make(seed, temperature=0.0)
        assert draw(sampler, logits, 20) == [int(torch.argmax(logits))] * 20


def test_same_seed_same_tokens_and_different_seeds_differ() -> None:
    logits = flat_logits()
    first = draw(make(7, temperature=1.0), logits)
    again = draw(make(7, temperature=1.0), logits)
    other = draw(make(8, temperature=1.0), logits)
    assert first == again
    assert first != other
    assert len(set(first)) > VOCAB // 2  # it really samples: many distinct tokens
    # No seed: fresh randomness each time.
    assert draw(make(None, temperature=1.0), logits) != draw(make(None, temperature=1.0), logits)


def test_sampling_follows_the_distribution() -> None:
    counts = Counter(draw(make(3, temperature=1.0), from_probs(0.7, 0.2, 0.1), 2000))
    assert set(counts) == {0, 1, 2}
    assert 0.64 < counts[0] / 2000 < 0.76
    assert 0.16 < counts[1] / 2000 < 0.24


def test_temperature_sharpens_and_flattens() -> None:
    logits = from_probs(0.6, 0.4)
    cold = Counter(draw(make(5, temperature=0.2), logits, 1000))
    hot = Counter(draw(make(5, temperature=5.0), logits, 1000))
    assert cold[0] / 1000 > 0.8  # 0.6:0.4 at T=0.2 is ~0.88:0.12
    assert 0.42 < hot[0] / 1000 < 0.62  # at T=5 it is ~0.52:0.48


def test_top_k_one_is_argmax() -> None:
    logits = flat_logits(4)
    assert set(draw(make(11, temperature=1.5, top_k=1), logits)) == {int(torch.argmax(logits))}


def test_top_k_limits_to_the_k_most_likely() -> None:
    logits = flat_logits(5)
    top3 = set(torch.topk(logits, 3).indices.tolist())
    assert set(draw(make(12, temperature=1.0, top_k=3), logits)) == top3


def test_tiny_top_p_keeps_only_the_top_token() -> None:
    logits = flat_logits(6)
    assert set(draw(make(13, temperature=1.0, top_p=1e-6), logits)) == {int(torch.argmax(logits))}


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    logits = from_probs(0.4, 0.3, 0.2, 0.1)
    assert set(draw(make(14, temperature=1.0, top_p=0.5), logits)) == {0, 1}  # 0.4 < 0.5 <= 0.7
    assert set(draw(make(14, temperature=1.0, top_p=0.8), logits)) == {0, 1, 2}  # 0.7 < 0.8 <= 0.9


def test_min_p_drops_tokens_below_a_fraction_of_the_top() -> None:
    logits = from_probs(0.5, 0.3, 0.15, 0.05)
    # Threshold 0.2 * 0.5 = 0.1: token 3 (0.05) goes, 0..2 stay.
    assert set(draw(make(15, temperature=1.0, min_p=0.2), logits)) == {0, 1, 2}
    # Threshold 0.7 * 0.5 = 0.35: only the top token is left.
    assert set(draw(make(15, temperature=1.0, min_p=0.7), logits)) == {0}


def test_frequency_penalty_lowers_a_repeated_tokens_chance() -> None:
    logits = from_probs(0.6, 0.3, 0.1)
    plain = Counter(draw(make(16, temperature=1.0), logits))
    penalised = Counter(draw(make(16, temperature=1.0, frequency_penalty=0.5), logits))
    assert plain[0] / DRAWS > 0.5
    # Each draw of a token costs it 0.5 logits, so the three tokens end up near-equally drawn.
    assert penalised[0] < plain[0] * 0.7
    assert penalised[2] > plain[2] * 2


def test_frequency_penalty_grows_with_each_repeat_but_presence_penalty_does_not() -> None:
    logits = torch.zeros(VOCAB)
    logits[0], logits[1] = 2.0, 1.5
    # Greedy makes the effect exact: token 0 loses 1.0 per occurrence with the frequency penalty...
    freq = draw(make(0, temperature=0.0, frequency_penalty=1.0), logits, 4)
    assert freq == [0, 1, 0, 1]
    # ...but only once with the presence penalty, after which 2.0 - 1.0 beats 1.5 - 1.0 forever.
    presence = draw(make(0, temperature=0.0, presence_penalty=1.0), logits, 5)
    assert presence == [0, 1, 0, 0, 0]
    assert draw(make(0, temperature=0.0), logits, 5) == [0] * 5


def test_negative_penalty_favours_repetition() -> None:
    logits = from_probs(0.34, 0.33, 0.33)
    counts = Counter(draw(make(17, temperature=1.0, presence_penalty=-2.0, frequency_penalty=-0.5), logits))
    assert counts.most_common(1)[0][1] > DRAWS * 0.9


@pytest.mark.parametrize("top_n", [1, 5, 20])
def test_logprobs_are_log_softmax_of_raw_logits_with_sorted_top_list(top_n: int) -> None:
    logits = flat_logits(8) * 5
    expected = torch.log_softmax(logits, dim=-1)
    # Temperature and penalties change what is sampled, never the reported logprobs.
    sampler = make(18, logprobs=True, top_n=top_n, temperature=0.7, frequency_penalty=1.0)
    for _ in range(10):
        token, entry = sampler.sample(logits)
        assert entry is not None and entry.token_id == token
        assert entry.logprob == pytest.approx(float(expected[token]), abs=1e-5)
        assert len(entry.top) == top_n
        values = [lp for _, lp in entry.top]
        assert values == sorted(values, reverse=True)
        assert entry.top[0][0] == int(torch.argmax(logits))
        for token_id, lp in entry.top:
            assert lp == pytest.approx(float(expected[token_id]), abs=1e-5)
        assert {t for t, _ in entry.top} == set(torch.topk(logits, top_n).indices.tolist())


def test_logprobs_only_when_asked() -> None:
    logits = flat_logits(9)
    assert make(1, temperature=1.0).sample(logits)[1] is None
    _, entry = make(1, logprobs=True, temperature=1.0).sample(logits)
    assert entry is not None and entry.top == []
    _, entry = make(1, top_n=2, temperature=1.0).sample(logits)  # alternatives imply the chosen one too
    assert entry is not None and len(entry.top) == 2


def test_greedy_logprob_is_the_top_alternative() -> None:
    logits = flat_logits(10) * 3
    token, entry = make(1, logprobs=True, top_n=3, temperature=0.0).sample(logits)
    assert entry is not None
    assert entry.top[0] == (token, pytest.approx(entry.logprob))


# -- logit_bias ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=2.0, top_p=0.9),
                                    dict(temperature=1.0, top_k=5, min_p=0.1)],
                         ids=["greedy", "t1", "t2-top-p", "top-k"])
def test_plus_100_bias_forces_a_token(params) -> None:
    logits = flat_logits(11) * 5
    unlikely = int(torch.argmin(logits))
    assert set(draw(make(19, logit_bias={unlikely: 100.0}, **params), logits, 200)) == {unlikely}


def test_minus_100_bias_bans_a_token() -> None:
    logits = from_probs(0.9, 0.05, 0.05)
    assert set(draw(make(20, temperature=0.0, logit_bias={0: -100.0}), logits, 5)) == {1}
    counts = Counter(draw(make(20, temperature=1.0, logit_bias={0: -100.0}), logits))
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > 0


def test_small_bias_shifts_the_distribution_by_its_exponent() -> None:
    # Two equal tokens; +ln(3) on token 1 makes it three times as likely as token 0 (at temperature 1).
    counts = Counter(draw(make(21, temperature=1.0, logit_bias={1: math.log(3.0)}), from_probs(0.5, 0.5), 4000))
    assert 0.71 < counts[1] / 4000 < 0.79


def test_bias_does_not_lift_a_masked_token() -> None:
    """A token the grammar (or a held-back stop token) set to -inf stays banned, +100 or not."""
    logits = flat_logits(12)
    logits[[3, 4]] = float("-inf")
    for params in (dict(temperature=0.0), dict(temperature=1.0)):
        tokens = draw(make(22, logit_bias={3: 100.0, 4: 100.0}, **params), logits, 100)
        assert not {3, 4} & set(tokens)
    # When the mask leaves one token, even a -100 bias on it cannot ban it.
    only = torch.full((VOCAB,), float("-inf"))
    only[7] = 0.0
    assert draw(make(22, temperature=1.0, logit_bias={7: -100.0}), only, 10) == [7] * 10


def test_logprobs_are_of_the_unbiased_distribution_and_the_row_is_untouched() -> None:
    logits = flat_logits(13) * 3
    before = logits.clone()
    expected = torch.log_softmax(logits, dim=-1)
    unlikely = int(torch.argmin(logits))
    token, entry = make(23, logprobs=True, top_n=3, temperature=1.0, logit_bias={unlikely: 100.0}).sample(logits)
    assert token == unlikely and entry is not None
    assert entry.logprob == pytest.approx(float(expected[unlikely]), abs=1e-5)  # what the model thinks of it
    assert entry.top[0][0] == int(torch.argmax(logits))  # the forced token is not among the top alternatives
    assert torch.equal(logits, before)  # shared by a request's choices: the bias is never written into it


def test_bias_and_penalties_add_up() -> None:
    logits = torch.zeros(VOCAB)
    logits[0], logits[1] = 3.0, 2.0
    # Token 1 gets +0.5: 3.0 vs 2.5; each occurrence of the leader then costs it 1.0 (frequency penalty).
    tokens = draw(make(0, temperature=0.0, frequency_penalty=1.0, logit_bias={1: 0.5}), logits, 4)
    assert tokens == [0, 1, 0, 1]
