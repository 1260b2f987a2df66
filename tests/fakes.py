"""Small stand-ins for the engine and the prompt renderer, for unit tests that load no model.

FakeEngine implements the Engine protocol of engines/base.py: every choice spells out a scripted text one
token per event, then ends with an end-of-turn token (finish "stop") or at max_new_tokens (finish "length").
Its `thinking_budgets` is false, so the pipeline enforces reasoning budgets with two calls (chat/reasoning_calls.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any

from chat.families import FAMILIES
from engines.base import EngineError, EngineEvent, EngineRequest, ModelInfo, RequestFacts, TokenLogprob

EOS_ID = 2
EOS_PIECE = "<|im_end|>"
FIRST_ID = 10  # scripted pieces get ids FIRST_ID, FIRST_ID + 1, ...
DEFAULT_SCRIPT = ("Hello", ",", " world", "!", " How", " are", " you", "?")
VOCAB_SIZE = 1000  # what the fake model says its vocabulary holds (logit_bias ids are checked against it)


class FakeTokenizer:
    """Just what chat.tokens.TokenTexts needs: GPT-2-style pieces (a space is 'Ġ') and decode."""

    def __init__(self, pieces: Iterable[str]) -> None:
        self._text: dict[int, str] = {EOS_ID: EOS_PIECE}
        self._ids: dict[str, int] = {}
        for piece in pieces:
            if piece not in self._ids:
                token_id = FIRST_ID + len(self._ids)
                self._ids[piece] = token_id
                self._text[token_id] = piece
        self.eos_token_id = EOS_ID
        self.chat_template = "{{ messages }}"

    def id_of(self, piece: str) -> int:
        return self._ids[piece]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """None for a text that is not one token (tools/request.py asks it of tool-call markers)."""
        return self._ids.get(token.replace("Ġ", " "))

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, list):
            return [self._text[i].replace(" ", "Ġ") for i in ids]
        return self._text[ids].replace(" ", "Ġ")

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._text[i] for i in ids)


class FakeRenderer:
    """Same attributes as chat.template.PromptRenderer: 4 ids per message plus one per word."""

    family = FAMILIES["generic"]  # the fake engine's model family: no end-of-turn text, no tool format

    def __init__(self, tokenizer: FakeTokenizer) -> None:
        self.tokenizer = tokenizer
        self.stop_token_ids: tuple[int, ...] = (EOS_ID,)
        self.rendered: list[list[Any]] = []
        self.texts: list[str] = []  # what tokenize() was given

    def render(self, messages: list[Any]) -> list[int]:
        self.rendered.append(list(messages))
        ids: list[int] = []
        for message in messages:
            content = message.content
            text = content if isinstance(content, str) else " ".join(
                getattr(part, "text", "") for part in (content or []))
            ids.extend([1, 1, 1, 1])
            ids.extend(3 for _ in text.split())
        return ids

    def render_text(self, messages: list[Any], tools: list[dict[str, Any]] | None = None,
                    options: dict[str, Any] | None = None, add_generation_prompt: bool = True) -> str:
        """The text path (the reasoning stage appends its opening marker to it): one line per message."""
        self.rendered.append(list(messages))
        lines = [f"{m.__struct_config__.tag}: {m.content if isinstance(m.content, str) else ''}" for m in messages]
        return "\n".join([*lines, "assistant: "] if add_generation_prompt else lines)

    def tokenize(self, text: str) -> list[int]:
        """One id per word, like render(); the texts are kept in `.texts`."""
        self.texts.append(text)
        return [3 for _ in text.split()] or [1]


class FakeEngine:
    thinking_budgets = False  # the pipeline enforces reasoning budgets with two calls (chat/reasoning_calls.py)

    def __init__(self, script: Sequence[str] = DEFAULT_SCRIPT, *, model_id: str = "fake-model",
                 aliases: tuple[str, ...] = ("fake",), context_length: int = 512, vision: bool = False,
                 logprob: float = -0.25, cached_tokens: int = 0, fail_after: int | None = None,
                 resume: bool = False) -> None:
        self.model_info = ModelInfo(id=model_id, aliases=aliases, context_length=context_length,
                                    vision=vision, created=int(time.time()), vocab_size=VOCAB_SIZE)
        self.script = list(script)
        self.tokenizer = FakeTokenizer(self.script)
        self.logprob = logprob
        self.cached_tokens = cached_tokens
        self.forgotten: list[str] = []  # session keys the app said were gone
        self.fail_after = fail_after  # raise EngineError after this many decode steps
        # A prompt that holds scripted tokens continues the script after them (as the second of the
        # pipeline's two reasoning calls continues the first); else every request spells it from the start.
        self.resume = resume
        self.full = False  # refuse admission like a full queue (429)
        self.is_ready = True
        self.requests: list[EngineRequest] = []
        self.aborted: list[str] = []
        self.prepared: list[Any] = []
        self.released: list[str] = []  # request ids whose event stream was closed (finished or dropped)
        self.closed = False

    def unavailable(self) -> str | None:
        return None if self.is_ready else "no worker is answering (fake)"

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0, "requests": len(self.requests)}

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        if self.full:  # eager, like the embedded engine: before any response starts
            raise EngineError("the server is busy: the request queue is full; retry shortly",
                              status=429, code="queue_full", retry_after=1.0)
        self.requests.append(req)
        return self._events(req)

    def _logprobs(self, req: EngineRequest, token_id: int) -> list[TokenLogprob] | None:
        if not req.logprobs:
            return None
        top = [(token_id, self.logprob), (EOS_ID, self.logprob - 2.0)][: req.top_logprobs]
        return [TokenLogprob(token_id=token_id, logprob=self.logprob, top=top)]

    async def _events(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        sequence = [self.tokenizer.id_of(p) for p in self.script] + [EOS_ID]
        if self.resume:
            scripted = set(sequence)
            sequence = sequence[sum(1 for t in req.prompt_ids if t in scripted):]
        limit = req.sampling.max_new_tokens
        live = set(range(req.n))
        step = 0
        try:
            while live:
                if self.fail_after is not None and step >= self.fail_after:
                    raise EngineError("decode failed: simulated fault")
                token_id = sequence[step]
                for index in sorted(live):  # choices interleave, as in a batch
                    finish = None
                    if token_id in req.sampling.stop_token_ids or step + 1 == len(sequence):
                        finish = "stop"
                    elif step + 1 >= limit:
                        finish = "length"
                    text = "" if token_id == EOS_ID else self.tokenizer.decode([token_id])
                    yield EngineEvent(index=index, token_ids=[token_id], text=text,
                                      logprobs=self._logprobs(req, token_id), finish_reason=finish,
                                      facts=RequestFacts(len(req.prompt_ids), self.cached_tokens, 0.0)
                                      if step == 0 or finish is not None else None)  # never queued
                    if finish is not None:
                        live.discard(index)
                step += 1
                await asyncio.sleep(0)
        finally:
            self.released.append(req.request_id)

    def prepare_constraint(self, constraint: Any) -> None:
        self.prepared.append(constraint)  # no grammar engine here: a constraint is only recorded

    def forget_session(self, session_key: str) -> None:
        self.forgotten.append(session_key)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def close(self) -> None:
        self.closed = True
