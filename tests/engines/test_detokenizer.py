"""Incremental detokenization with SmolLM2's byte-level BPE: multi-byte characters are never split."""

from __future__ import annotations

import pytest

from engines.detokenizer import IncrementalDetokenizer

TEXTS = [
    "héllo wörld 你好 🌍 done",
    "Ünïcödé   spaces\tand\nnewlines — “quotes” ½ ∑ 日本語のテキスト 👩‍💻🇫🇷 end.",
    "  leading spaces, then code: def f(x):\n    return x ** 2  # ✓",
]


def stream(tokenizer, ids: list[int]) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(token) for token in ids]
    return pieces, detok.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_join_to_the_full_decode(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # The test only means something when tokens really split characters.
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids) or text == TEXTS[2]
    pieces, tail = stream(tokenizer, ids)
    assert "".join(pieces) + tail == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert tail == ""  # the text ends on a whole character: nothing is held back


def test_text_appears_as_soon_as_a_character_is_complete(tokenizer) -> None:
    ids = tokenizer("a 你", add_special_tokens=False)["input_ids"]
    assert [tokenizer.convert_ids_to_tokens(t) for t in ids] == ["a", "Ġ", "ä½", "ł"]
    pieces, _ = stream(tokenizer, ids)
    # The space comes out at once; the first byte pair of 你 is held back until its last byte arrives.
    assert pieces == ["a", " ", "", "你"]


def test_special_tokens_are_skipped(tokenizer) -> None:
    ids = tokenizer("Hi <|im_end|> there", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    pieces, tail = stream(tokenizer, ids)
    assert "".join(pieces) + tail == tokenizer.decode(ids, skip_special_tokens=True)
    assert "im_end" not in "".join(pieces)


def test_flush_releases_an_incomplete_character(tokenizer) -> None:
    ids = tokenizer("ok 🌍", add_special_tokens=False)["input_ids"]
    partial = ids[:-1]  # the emoji's last byte never comes
    pieces, tail = stream(tokenizer, partial)
    assert "".join(pieces) == "ok"
    assert "".join(pieces) + tail == tokenizer.decode(partial)
    assert tail.endswith("\ufffd")
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.flush() == ""  # nothing pushed, nothing to flush


def test_model_generated_tokens_stream_like_the_full_decode(tokenizer) -> None:
    """Tokens as a model emits them (not the tokenizer's own segmentation) join up the same way."""
    pieces_ids = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.tokenize(" 你好🌍")]
    ids = pieces_ids + [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.tokenize("x")] + pieces_ids[::-1]
    pieces, tail = stream(tokenizer, ids)
    assert "".join(pieces) + tail == tokenizer.decode(ids)


def test_the_fast_decode_is_the_tokenizers_own_decode(tokenizer) -> None:
    """text_decoder skips transformers' wrapper only where it gives the same text: random token ids of
    the whole vocabulary, special tokens included."""
    import random

    from engines.detokenizer import text_decoder

    decode = text_decoder(tokenizer)
    assert decode.func == tokenizer.backend_tokenizer.decode  # the fast path is the one taken here
    rng = random.Random(7)
    for _ in range(2000):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 10))]
        assert decode(ids) == tokenizer.decode(ids, skip_special_tokens=True), ids


def test_a_tokenizer_that_cleans_up_spaces_keeps_transformers_decode(tokenizer) -> None:
    from types import SimpleNamespace

    from engines.detokenizer import text_decoder

    cleaning = SimpleNamespace(backend_tokenizer=tokenizer.backend_tokenizer, clean_up_tokenization_spaces=True,
                               decode=tokenizer.decode)
    assert text_decoder(cleaning).func == tokenizer.decode


def test_tokens_pushed_together_give_the_same_text_as_one_by_one(tokenizer) -> None:
    """push_many (a relay batch) against push per token: the same text in total, over random ids of the
    whole vocabulary cut into random batches, and over real text whose characters span tokens."""
    import random

    rng = random.Random(11)
    samples = [[rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))] for _ in range(500)]
    samples += [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    for ids in samples:
        one_by_one, tail = stream(tokenizer, ids)
        detok = IncrementalDetokenizer(tokenizer)
        batched, at = [], 0
        while at < len(ids):
            size = rng.randrange(1, 9)
            batched.append(detok.push_many(ids[at:at + size]))
            at += size
        assert "".join(batched) + detok.flush() == "".join(one_by_one) + tail, ids
