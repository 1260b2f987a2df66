"""Grammar-constrained sampling in the embedded engine, with llguidance.

A compiled grammar is kept per constraint key (LRU) and deep-copied for each choice, so ten requests with
the same tools compile once. Each step, the choice's matcher computes the set of allowed next tokens
(tens of microseconds) and every other logit is set to -inf before sampling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch

from engines.base import Constraint, EngineError

log = logging.getLogger("lodestar.grammar")
# Errors name the problem without the parser state and the whole grammar (a 64 KB schema made 67 KB log lines).
LIMITS = llguidance.LLParserLimits(verbose_errors=False)


class GrammarFailed(EngineError):
    """The grammar engine gave up in the middle of a reply (a limit of its own): the reply cannot be trusted."""

    def __init__(self, detail: str) -> None:
        detail = " ".join(detail.split())[:300]
        super().__init__(f"the schema is too complex to enforce: the grammar engine stopped mid-reply ({detail})",
                         status=400, code="schema_too_complex")


class GrammarCompiler:
    def __init__(self, tokenizer: Any, vocab_size: int, cache_entries: int = 128) -> None:
        # Wrapping the tokenizer costs about a second; it is done once per engine.
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        self.compiled = 0
        self.reused = 0
        self.compile_ms = 0.0  # total time spent compiling (cache misses)

    def compile(self, constraint: Constraint) -> llguidance.LLMatcher:
        """The compiled grammar for a constraint, from the cache or built now (blocking; drops the GIL)."""
        with self._lock:
            template = self._cache.get(constraint.key)
            if template is not None:
                self._cache.move_to_end(constraint.key)
                self.reused += 1
                return template
        started = time.perf_counter()
        template = llguidance.LLMatcher(self.tokenizer, constraint.grammar, log_level=0, limits=LIMITS)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if template.is_error():
            raise ValueError(f"the grammar cannot be used: {template.get_error()}")
        with self._lock:
            self.compiled += 1
            self.compile_ms += elapsed_ms
            self._cache[constraint.key] = template
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return template

    def state(self, constraint: Constraint) -> GrammarState:
        return GrammarState(self.compile(constraint).deep_copy(), self.vocab_size)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"grammars_compiled": self.compiled, "grammars_reused": self.reused,
                    "grammar_compile_ms": round(self.compile_ms)}


def forbidden_tokens(bitmask: np.ndarray, vocab: int) -> torch.Tensor:
    """llguidance's bitmask (bit i of 32-bit word j: token 32j + i) as True for each token it does not allow;
    tokens past the mask (a model's padded vocabulary) are not allowed. Unpacked by numpy: llguidance.torch's
    version is a torch.compile kernel, which costs seconds of import and a C++ compile on its first call."""
    bits = np.unpackbits(bitmask.view(np.uint8), count=vocab, bitorder="little")  # x86 and ARM: little-endian
    return torch.from_numpy(bits == 0)


class GrammarState:
    """One choice's progress through its grammar."""

    __slots__ = ("matcher", "bitmask")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)

    def restrict(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar does not allow next to -inf, in place ([vocab] row)."""
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        if self.matcher.is_error():  # an errored matcher allows only end-of-sequence: never a silent "stop"
            raise GrammarFailed(self.matcher.get_error())
        logits.masked_fill_(forbidden_tokens(self.bitmask[0], logits.shape[-1]), float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):  # cannot happen for a token the mask allowed
            log.error("grammar rejected token %d: %s", token, self.matcher.get_error()[:300])
            raise GrammarFailed(self.matcher.get_error())
