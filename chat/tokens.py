"""Token ids -> the strings and bytes OpenAI's logprobs report."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


class TokenTexts:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._bytes = lru_cache(maxsize=65536)(self._compute_bytes)

    def _compute_bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            table = _byte_decoder()
            if piece and all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
            if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece bytes
                return bytes([int(piece[3:5], 16)])
            if "▁" in piece:
                return piece.replace("▁", " ").encode()
        return self.tokenizer.decode([token_id]).encode()

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes(token_id)

    def token_str(self, token_id: int) -> str:
        return self._bytes(token_id).decode("utf-8", errors="replace")
