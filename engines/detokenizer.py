"""Incremental detokenization that never splits a UTF-8 character.

Decoding token by token breaks multi-byte characters and word-initial spaces; decoding a short window of
recent tokens and emitting only what is new and complete does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_REPLACEMENT = "\ufffd"


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, by the Rust tokenizer itself when transformers'
    wrapper would add nothing (no clean-up of tokenization spaces): the same text, 2.7x faster per call,
    and the relay decodes twice per token (docs/benchmarks.md)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", None) is False:
        return functools.partial(backend.decode, skip_special_tokens=True)
    return functools.partial(tokenizer.decode, skip_special_tokens=True)


class IncrementalDetokenizer:
    __slots__ = ("tokenizer", "ids", "prefix_offset", "read_offset", "_decode")

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self._decode = text_decoder(tokenizer)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        decode = self._decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        full = decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""

    def push_many(self, token_ids: list[int]) -> str:
        """Add tokens that came together; return the text they complete: decoded at once, unless the last
        one leaves a character incomplete (then token by token, holding back only that character)."""
        if len(token_ids) <= 1:
            return self.push(token_ids[0]) if token_ids else ""
        ids, start = self.ids, len(self.ids)
        ids.extend(token_ids)
        prefix = self._decode(ids[self.prefix_offset : self.read_offset])
        full = self._decode(ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT):
            self.prefix_offset = self.read_offset
            self.read_offset = len(ids)
            return full[len(prefix) :]
        del ids[start:]
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end becomes U+FFFD)."""
        decode = self._decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        full = decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""
