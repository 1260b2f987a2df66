"""SGLang's native `/generate` contract, the reply side: the streamed `data:` payloads as EngineEvents.

Replies are read through `output_ids`, never SGLang's text, and detokenized here: the text then matches the
embedded engine's token for token, whether the server streams cumulative or incremental output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from engines.base import EngineError, EngineEvent, FinishReason, RequestFacts, TokenLogprob
from engines.detokenizer import IncrementalDetokenizer


class _Meta(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: dict[str, Any] | None = None
    output_token_logprobs: list[list[Any]] | None = None
    output_top_logprobs: list[list[list[Any]] | None] | None = None


class _Chunk(msgspec.Struct):
    text: str = ""
    output_ids: list[int] | None = None
    index: int | None = None
    meta_info: _Meta | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_EMPTY_META = _Meta()


class _HeadMeta(msgspec.Struct):
    finish_reason: dict[str, Any] | None = None


class _Head(msgspec.Struct):
    """What a payload is read for before its tokens: whose it is and whether it ends (or fails) a choice."""

    index: int | None = None
    meta_info: _HeadMeta | None = None
    error: Any = None


_decode_head = msgspec.json.Decoder(_Head).decode


def error_message(payload: Any) -> str:
    """The message of an SGLang error body, whichever of its shapes it has."""
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or inner)
        if inner is not None:
            return str(inner)
        return str(payload.get("message") or payload)
    return str(payload)


@dataclass(slots=True)
class _Piece:
    """What one payload adds to its choice."""

    index: int
    ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish: FinishReason | None
    facts: RequestFacts | None


@dataclass(slots=True)
class _ChoiceState:
    detok: IncrementalDetokenizer
    seen: int = 0  # completion tokens already turned into events
    finished: bool = False


@dataclass(slots=True)
class ReplyReader:
    """Turns the stream's `data:` payloads into EngineEvents, one choice state per index."""

    tokenizer: Any
    n: int
    prompt_tokens: int | None = None  # the prompt's size when Lodestar knows it better (image prompts)
    choices: list[_ChoiceState] = field(init=False)
    failure: EngineError | None = field(default=None, init=False)  # to raise once the batch's events are out
    # The worker streams cumulative output_ids (SGLang's default), as its payloads have shown: then a payload
    # followed by the same choice's next one in a batch says nothing the next does not, and is skipped.
    cumulative: bool = field(default=False, init=False)
    _mode_known: bool = field(default=False, init=False)  # a batch has shown which, so no batch checks again

    def __post_init__(self) -> None:
        self.choices = [_ChoiceState(IncrementalDetokenizer(self.tokenizer)) for _ in range(self.n)]

    @property
    def done(self) -> bool:
        return all(c.finished for c in self.choices)

    def read(self, data: bytes) -> EngineEvent | None:
        events = self.read_batch([data])
        if self.failure is not None:
            raise self.failure
        return events[0] if events else None

    def read_batch(self, payloads: list[bytes]) -> list[EngineEvent]:
        """The events of payloads that arrived together: one per run of a choice's payloads (the tokens a
        client would otherwise get in separate chunks, when the relay is behind the worker), detokenized
        at once. An error after some events is kept in `failure`, to raise once they are out."""
        events: list[EngineEvent] = []
        run: list[_Piece] = []
        if len(payloads) > 1:
            # Usually learned from a batch's first and last payloads (once per request): a relay that is
            # behind from the start (a fast worker) receives a whole reply as its first batch.
            if not self.cumulative and not self._mode_known:
                verdict = _repeats(payloads[0], payloads[-1])
                self._mode_known = verdict is not None
                self.cumulative = bool(verdict)
            if self.cumulative:
                payloads = _latest(payloads)
        for data in payloads:
            try:
                piece = self._piece(data)
            except EngineError as exc:
                if not events and not run:
                    raise
                self.failure = exc
                break
            if piece is None:
                continue
            if run and run[-1].index != piece.index:
                events.append(self._event(run))
                run = []
            run.append(piece)
            if piece.finish is not None:
                events.append(self._event(run))
                run = []
        if run:
            events.append(self._event(run))
        return events

    def _piece(self, data: bytes) -> _Piece | None:
        """One payload's new tokens (None if its choice has finished)."""
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            raise EngineError(f"the SGLang worker sent an unreadable reply: {exc}", status=502,
                              code="engine_protocol_error") from None
        if chunk.error is not None:
            raise stream_error(chunk.error)
        index = chunk.index or 0
        if not 0 <= index < self.n:
            raise EngineError(f"the SGLang worker answered for choice {index} of {self.n}", status=502,
                              code="engine_protocol_error")
        state, meta = self.choices[index], chunk.meta_info or _EMPTY_META
        if state.finished:
            return None
        ids = chunk.output_ids or []
        # completion_tokens counts the choice's tokens so far in both streaming modes; the new ones are
        # the last of output_ids (all of them when the server streams incrementally).
        count, seen = len(ids), state.seen
        new = meta.completion_tokens - seen if meta.completion_tokens else count
        if new < count:
            ids = ids[count - max(new, 0):]
            if seen:  # it repeats tokens an earlier payload carried
                self.cumulative = True
        state.seen = seen = seen + len(ids)
        finish = _finish(meta.finish_reason) if meta.finish_reason is not None else None
        if finish is not None:
            state.finished = True
        facts = None
        if seen == len(ids) or finish is not None:  # a choice's first event, and its last
            facts = RequestFacts(self.prompt_tokens or meta.prompt_tokens, meta.cached_tokens)
        logprobs = _logprobs(meta, len(ids)) if meta.output_token_logprobs is not None else None
        return _Piece(index, ids, logprobs, finish, facts)

    def _event(self, run: list[_Piece]) -> EngineEvent:
        """A run of one choice's pieces as one event."""
        last = run[-1]
        if len(run) == 1:
            ids, logprobs = last.ids, last.logprobs
        else:
            ids = [t for piece in run for t in piece.ids]
            logprobs = None if all(p.logprobs is None for p in run) else \
                [lp for piece in run for lp in piece.logprobs or ()]
        detok = self.choices[last.index].detok
        text = detok.push_many(ids)
        if last.finish is not None:
            text += detok.flush()
        facts = last.facts or next((p.facts for p in run if p.facts is not None), None)
        return EngineEvent(index=last.index, token_ids=list(ids), text=text, logprobs=logprobs,
                           finish_reason=last.finish, facts=facts)


def _latest(payloads: list[bytes]) -> list[bytes]:
    """Cumulative payloads without those the same choice's next payload supersedes (one that finishes or
    fails a choice, or cannot be read, is always kept, and so is one before a failure: its tokens leave
    before the error)."""
    kept = []
    heads: list[_Head | None] = []
    for data in payloads:
        try:
            heads.append(_decode_head(data))
        except msgspec.DecodeError:
            heads.append(None)
    for i, (data, head) in enumerate(zip(payloads, heads, strict=True)):
        following = heads[i + 1] if i + 1 < len(heads) else None
        if head is None or following is None or following.index != head.index or _ends(head) or \
                _fails(following):
            kept.append(data)
    return kept


def _ends(head: _Head) -> bool:
    """Whether a payload fails or finishes its choice."""
    return head.error is not None or (head.meta_info is not None and head.meta_info.finish_reason is not None)


def _fails(head: _Head) -> bool:
    reason = head.meta_info.finish_reason if head.meta_info is not None else None
    return head.error is not None or (reason is not None and reason.get("type") == "abort")


def _repeats(first: bytes, last: bytes) -> bool | None:
    """Whether the last payload repeats the first's tokens: it holds all of its choice's completion tokens
    although the first, of the same choice, carried some (incremental output would hold fewer). None when
    the two cannot tell (other choices, no tokens first, unreadable)."""
    try:
        a, b = _decode_chunk(first), _decode_chunk(last)
    except msgspec.DecodeError:
        return None
    if (a.index or 0) != (b.index or 0) or not a.output_ids or b.meta_info is None:
        return None
    return len(b.output_ids or ()) == b.meta_info.completion_tokens


def _finish(reason: dict[str, Any] | None) -> FinishReason | None:
    if reason is None:
        return None
    kind = reason.get("type")
    if kind == "abort":
        status = reason.get("status_code")
        message = reason.get("message") or "the SGLang worker aborted the request"
        status = status if isinstance(status, int) and 400 <= status < 600 else 503
        raise EngineError(str(message), status=status, code="engine_aborted")
    return "length" if kind == "length" else "stop"


def _logprobs(meta: _Meta, count: int) -> list[TokenLogprob] | None:
    entries = meta.output_token_logprobs
    if entries is None or count == 0:
        return None
    if len(entries) < count:
        raise EngineError("the SGLang worker sent fewer logprobs than tokens", status=502,
                          code="engine_protocol_error")
    entries = entries[len(entries) - count:]
    tops = (meta.output_top_logprobs or [])
    tops = tops[len(tops) - count:] if len(tops) >= count else [None] * count
    return [TokenLogprob(token_id=int(e[1]), logprob=_float(e[0]),
                         top=[(int(t[1]), _float(t[0])) for t in (row or [])])
            for e, row in zip(entries, tops, strict=True)]


# SGLang (OutputLogprobProcessor.compute_logprobs) clamps the -inf of a token its grammar masks to the lowest
# float32, -3.4e38, before sending it; a -inf left as such would reach the wire as null (orjson). Both mean
# -inf: the token could not be generated. A logprob of a token that could is nowhere near this bound.
_MASKED_BELOW = -1e30


def _float(value: Any) -> float:
    """A worker's logprob, -inf for a token it could not generate (sent as null or clamped)."""
    if value is None:  # SGLang's contract allows a null logprob
        return float("-inf")
    logprob = float(value)
    return float("-inf") if logprob <= _MASKED_BELOW else logprob


def stream_error(payload: Any) -> EngineError:
    code = payload.get("code") if isinstance(payload, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 500 else 502
    if status == 429:
        return EngineError(f"the SGLang worker is busy: {error_message(payload)}", status=429,
                           code="engine_busy", retry_after=1.0)
    return EngineError(f"the SGLang worker failed the request: {error_message(payload)}", status=status,
                       code="invalid_request" if status < 500 else "engine_error")
