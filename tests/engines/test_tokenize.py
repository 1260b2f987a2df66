"""The prompt renderer tokenizes with the Rust tokenizer itself: the same ids as transformers' __call__, for
SmolLM2's and Qwen3's tokenizers, over text with special tokens, odd whitespace and random characters."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from chat.families import detect_family
from chat.template import PromptRenderer
from tests.engines.test_detokenizer import TEXTS


def texts() -> list[str]:
    rng = random.Random(5)
    alphabet = "ab c\n\t  é你🌍<|>_/{}\"'0123456789"
    made = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(300)]
    return [*TEXTS, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<think>\n\n</think>\n\n", "",
            *made]


def check(tokenizer: Any) -> None:
    renderer = PromptRenderer(tokenizer, detect_family(None, tokenizer.chat_template))
    assert renderer._encode_fast is not None  # the fast path is the one tested
    for text in texts():
        assert renderer.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_smollm2(tokenizer: Any) -> None:
    check(tokenizer)


def test_qwen3(tiny_qwen3_model: Path) -> None:
    from transformers import AutoTokenizer

    check(AutoTokenizer.from_pretrained(tiny_qwen3_model))


def test_a_tokenizer_without_a_rust_backend_uses_transformers(tokenizer: Any) -> None:
    class Slow:
        chat_template = tokenizer.chat_template

        def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
            return {"input_ids": [len(text)]}

        def __getattr__(self, name: str) -> Any:  # everything but the tokenizing: the real tokenizer's
            if name == "backend_tokenizer":
                raise AttributeError(name)
            return getattr(tokenizer, name)

    with pytest.raises(AssertionError):
        check(Slow())
    assert PromptRenderer(Slow(), detect_family(None, tokenizer.chat_template)).tokenize("abc") == [3]
