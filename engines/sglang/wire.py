"""SGLang's native `/generate` contract: an EngineRequest as the JSON body, the streamed replies as events.

The body holds only fields of SGLang's published contract (sglang/api/v1/api_types.py; the contract tests
decode every body with it). Choices are sent as a batch of identical prompts, one rid and one seed each, so
`n` seeded choices differ the way they do on the embedded engine. Replies are read through `output_ids`,
never SGLang's text, and detokenized here: the text then matches the embedded engine's token for token,
whether the server streams cumulative or incremental output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from engines.base import EngineError, EngineEvent, EngineRequest, FinishReason, RequestFacts, TokenLogprob
from engines.detokenizer import IncrementalDetokenizer

# Seeds beyond this are folded: SGLang reads sampling_seed as a signed 64-bit integer.
_SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF


def choice_rids(req: EngineRequest) -> list[str]:
    return [req.request_id] if req.n == 1 else [f"{req.request_id}-{i}" for i in range(req.n)]


def sampling_params(req: EngineRequest, index: int) -> dict[str, Any]:
    s = req.sampling
    params: dict[str, Any] = {
        "max_new_tokens": s.max_new_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "stop_token_ids": list(s.stop_token_ids),
        "skip_special_tokens": False,  # the text is ours (from output_ids); keep SGLang's work minimal
    }
    if s.stop:
        params["stop"] = list(s.stop)  # the worker ends early; the pipeline still cuts the text
    if s.ignore_eos:
        params["ignore_eos"] = True  # else the worker stops at the model's EOS whatever stop_token_ids says
    if s.top_k > 0:
        params["top_k"] = s.top_k
    if s.min_new_tokens:
        params["min_new_tokens"] = s.min_new_tokens
    if s.seed is not None:
        params["sampling_seed"] = (s.seed + index) & _SEED_MASK
    if req.constraint is not None:
        # llguidance reads Lark grammars as "ebnf": the workers run --grammar-backend llguidance.
        params["ebnf"] = req.constraint.grammar
    if s.logit_bias:
        # SGLang's own shape: token ids as decimal strings -> floats, added after its grammar mask.
        params["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    return params


def generate_body(req: EngineRequest, *, prompt: list[int] | str, image_urls: list[str]) -> dict[str, Any]:
    """The JSON body of one streamed `/generate` call for all of the request's choices."""
    n = req.n
    prompt_key = "text" if isinstance(prompt, str) else "input_ids"
    body: dict[str, Any] = {"stream": True}
    if n == 1:
        body.update({"rid": req.request_id, prompt_key: prompt, "sampling_params": sampling_params(req, 0)})
        if image_urls:
            body["image_data"] = list(image_urls)
    else:
        body.update({"rid": choice_rids(req), prompt_key: [prompt] * n,
                     "sampling_params": [sampling_params(req, i) for i in range(n)]})
        if image_urls:
            body["image_data"] = [list(image_urls) for _ in range(n)]
    if req.logprobs:
        body["return_logprob"] = True
        body["top_logprobs_num"] = req.top_logprobs
    return body


# -- replies --------------------------------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        self.choices = [_ChoiceState(IncrementalDetokenizer(self.tokenizer)) for _ in range(self.n)]

    @property
    def done(self) -> bool:
        return all(c.finished for c in self.choices)

    def read_batch(self, payloads: list[bytes]) -> list[EngineEvent]:
        """The events of payloads that arrived together: one per choice where a choice's follow each other
        (tokens a client would otherwise get in separate chunks, when the relay is behind the worker)."""
        events: list[EngineEvent] = []
        for data in payloads:
            try:
                event = self.read(data)
            except EngineError as exc:  # the events before it still go out first
                if not events:
                    raise
                self.failure = exc
                break
            if event is None:
                continue
            last = events[-1] if events else None
            if last is not None and last.index == event.index and last.finish_reason is None:
                events[-1] = _joined(last, event)
            else:
                events.append(event)
        return events

    def read(self, data: bytes) -> EngineEvent | None:
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
        state, meta = self.choices[index], chunk.meta_info or _Meta()
        if state.finished:
            return None
        ids = chunk.output_ids or []
        # completion_tokens counts the choice's tokens so far in both streaming modes; the new ones are
        # the last of output_ids (all of them when the server streams incrementally).
        new = max(0, meta.completion_tokens - state.seen) if meta.completion_tokens else len(ids)
        new_ids = ids[len(ids) - new:] if new <= len(ids) else ids
        state.seen += len(new_ids)
        finish = _finish(meta.finish_reason)
        text = "".join(state.detok.push(t) for t in new_ids)
        if finish is not None:
            text += state.detok.flush()
            state.finished = True
        facts = None
        if state.seen == len(new_ids) or finish is not None:  # a choice's first event, and its last
            facts = RequestFacts(self.prompt_tokens or meta.prompt_tokens, meta.cached_tokens)
        return EngineEvent(index=index, token_ids=list(new_ids), text=text,
                           logprobs=_logprobs(meta, len(new_ids)), finish_reason=finish, facts=facts)


def _joined(first: EngineEvent, then: EngineEvent) -> EngineEvent:
    """Two consecutive events of one choice as one."""
    logprobs = None if first.logprobs is None and then.logprobs is None else \
        [*(first.logprobs or ()), *(then.logprobs or ())]
    return EngineEvent(index=first.index, token_ids=first.token_ids + then.token_ids, text=first.text + then.text,
                       logprobs=logprobs, finish_reason=then.finish_reason, facts=then.facts or first.facts)


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
