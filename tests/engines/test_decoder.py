"""The embedded decoder against transformers' own forward pass, on the real SmolLM2-135M (fp32)."""

from __future__ import annotations

import pytest
import torch

from engines.embedded.decoder import Decoder, KVCache

pytestmark = pytest.mark.usefixtures("no_grad")

ATOL = 1e-3


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"max abs difference {diff:.2e} exceeds {atol:.0e}"


@pytest.fixture(scope="module")
def prompt(chat_ids) -> list[int]:
    ids = chat_ids("Name three rivers in Europe and say which is longest.")
    assert len(ids) > 40
    return ids


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    """transformers' own forward over the whole sequence: logits after its last token."""
    return model(torch.tensor([ids])).logits[0, -1]


def test_prefill_matches_transformers_forward(model, decoder: Decoder, prompt: list[int]) -> None:
    cache = decoder.new_cache(len(prompt))
    logits = decoder.prefill(cache, prompt)
    assert logits.shape == (decoder.vocab_size,)
    assert cache.length == len(prompt)
    assert_close(logits, reference_logits(model, prompt))


def test_decode_after_prefill_matches_transformers_forward(model, decoder: Decoder, prompt: list[int]) -> None:
    cache = decoder.new_cache(len(prompt))
    logits = decoder.prefill(cache, prompt)
    ids = list(prompt)
    for _ in range(3):
        token = int(torch.argmax(logits))
        ids.append(token)
        logits = decoder.decode([cache], [token])[0]
        assert cache.length == len(ids)
        assert_close(logits, reference_logits(model, ids))


def test_single_token_prefill_matches_transformers_forward(model, decoder: Decoder, prompt: list[int]) -> None:
    cache = decoder.new_cache(1)
    assert_close(decoder.prefill(cache, prompt[:1]), reference_logits(model, prompt[:1]))


@pytest.mark.parametrize("split", [1, 17, -1])
def test_chunked_prefill_matches_one_shot(decoder: Decoder, prompt: list[int], split: int) -> None:
    whole = decoder.new_cache(len(prompt))
    one_shot = decoder.prefill(whole, prompt)

    chunked = decoder.new_cache(8)  # small on purpose: the second chunk has to grow it
    decoder.prefill(chunked, prompt[:split])
    two_calls = decoder.prefill(chunked, prompt[split:])

    assert chunked.length == whole.length == len(prompt)
    assert_close(two_calls, one_shot)
    n = len(prompt)
    assert_close(chunked.k[:, :, :n], whole.k[:, :, :n])
    assert_close(chunked.v[:, :, :n], whole.v[:, :, :n])
    # The continuation is the same too.
    token = int(torch.argmax(one_shot))
    assert_close(decoder.decode([chunked], [token])[0], decoder.decode([whole], [token])[0])


def test_batched_decode_of_different_lengths_matches_decoding_alone(
        decoder: Decoder, prompt: list[int]) -> None:
    prompts = [prompt[:5], prompt[:19], prompt]  # three different lengths
    batch_caches, alone_caches, tokens = [], [], []
    for ids in prompts:
        cache = decoder.new_cache(len(ids))
        logits = decoder.prefill(cache, ids)
        batch_caches.append(cache)
        alone_caches.append(cache.fork())
        tokens.append(int(torch.argmax(logits)))

    for _ in range(4):  # a few steps, so later steps attend over batched-written cache entries
        batched = decoder.decode(batch_caches, tokens)
        assert batched.shape == (3, decoder.vocab_size)
        alone = torch.stack([decoder.decode([c], [t])[0] for c, t in zip(alone_caches, tokens, strict=True)])
        assert_close(batched, alone)
        assert [c.length for c in batch_caches] == [c.length for c in alone_caches]
        tokens = [int(t) for t in torch.argmax(alone, dim=-1)]
    assert [c.length for c in batch_caches] == [len(p) + 4 for p in prompts]


def test_extend_with_several_tokens_per_sequence_matches_decoding_them_one_by_one(
        decoder: Decoder, prompt: list[int]) -> None:
    """A speculative step: sequences of different lengths append 1, 4 and 3 tokens in one batch; every row of
    logits equals decoding that sequence's tokens one at a time, and so do the caches afterwards."""
    prompts = [prompt[:5], prompt[:19], prompt]
    rows = [[17], [260, 5353, 357, 10370], [28, 624, 16545]]
    batch_caches, alone_caches = [], []
    for ids in prompts:
        cache = decoder.new_cache(len(ids))
        decoder.prefill(cache, ids)
        batch_caches.append(cache)
        alone_caches.append(cache.fork())

    extended = decoder.extend(batch_caches, rows)
    assert extended.shape == (8, decoder.vocab_size)
    alone = torch.stack([decoder.decode([c], [t])[0] for c, tokens in zip(alone_caches, rows, strict=True)
                         for t in tokens])
    assert_close(extended, alone)
    for batched, single in zip(batch_caches, alone_caches, strict=True):
        assert batched.length == single.length
        assert_close(batched.k[:, :, : batched.length], single.k[:, :, : single.length])
    # A speculative step keeps a prefix of what it appended: cut back, decoding goes on as if never drafted.
    cut, reference = batch_caches[1], decoder.new_cache(19)
    cut.length -= 2
    decoder.prefill(reference, prompt[:19] + rows[1][:2])
    assert_close(decoder.decode([cut], [99])[0], decoder.decode([reference], [99])[0])


def test_kv_cache_reserve_grows_and_keeps_contents(decoder: Decoder, prompt: list[int]) -> None:
    cache = decoder.new_cache(4)
    assert cache.capacity == 4 and cache.length == 0
    decoder.prefill(cache, prompt[:10])  # prefill reserves what it needs
    assert cache.capacity >= 10 and cache.length == 10
    k, v = cache.k[:, :, :10].clone(), cache.v[:, :, :10].clone()

    same = cache.k
    cache.reserve(cache.capacity)  # enough room already: nothing moves
    assert cache.k is same

    before = cache.capacity
    cache.reserve(before + 1)  # grows by doubling when that is enough
    assert cache.capacity == before * 2
    cache.reserve(1000)  # or straight to what is needed
    assert cache.capacity == 1000
    assert cache.k.shape == cache.v.shape == (len(decoder.layers), decoder.kv_heads, 1000, decoder.head_dim)
    assert cache.length == 10
    assert torch.equal(cache.k[:, :, :10], k)
    assert torch.equal(cache.v[:, :, :10], v)
    assert cache.nbytes() == 2 * cache.k.numel() * cache.k.element_size()


def test_kv_cache_growth_during_decode_does_not_change_results(decoder: Decoder, prompt: list[int]) -> None:
    tight = decoder.new_cache(len(prompt))  # full after prefill: every decode step must grow it
    roomy = decoder.new_cache(len(prompt) + 16)
    token = int(torch.argmax(decoder.prefill(tight, prompt)))
    decoder.prefill(roomy, prompt)
    for _ in range(3):
        a = decoder.decode([tight], [token])[0]
        b = decoder.decode([roomy], [token])[0]
        assert torch.equal(a, b)
        token = int(torch.argmax(a))


def test_fork_is_independent(decoder: Decoder, prompt: list[int]) -> None:
    original = decoder.new_cache(len(prompt))
    logits = decoder.prefill(original, prompt)
    reference = decoder.new_cache(len(prompt))
    decoder.prefill(reference, prompt)
    k_before = original.k[:, :, : original.length].clone()

    twin = original.fork()
    assert isinstance(twin, KVCache)
    assert twin.length == original.length and twin.k is not original.k
    # Decode different tokens on the fork, several steps (including growth of its buffers).
    order = torch.argsort(logits, descending=True)
    token = int(order[1])
    for _ in range(70):
        token = int(torch.argmax(decoder.decode([twin], [token])[0]))
    assert twin.length == len(prompt) + 70

    assert original.length == len(prompt)
    assert torch.equal(original.k[:, :, : original.length], k_before)
    first = int(order[0])
    assert torch.equal(decoder.decode([original], [first])[0], decoder.decode([reference], [first])[0])


def test_unsupported_architecture_is_refused() -> None:
    class Config:
        model_type = "gpt2"

    class Model:
        config = Config()

    with pytest.raises(ValueError, match="gpt2"):
        Decoder(Model())
