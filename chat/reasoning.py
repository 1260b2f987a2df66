"""The reasoning stage: which requests think, how many tokens they may think, and reasoning kept apart
from the answer.

Policy lives here; an engine only enforces the budget it is given (engines/thinking.py). Every reasoning
section starts in the prompt: when a request thinks, the prompt ends with the opening marker (the template
writes it, or this stage appends it), so the budget counts from the first generated token and a grammar
can start right after the closing marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chat.families import PROMPTED_THINK, Family
from core.errors import invalid
from core.protocol import ChatCompletionRequest
from core.settings import ReasoningSettings
from core.text import partial_suffix
from engines.base import EngineEvent, ThinkingBudget

# Share of the completion budget (max_tokens, or what is left of the context) that each effort may think.
EFFORT_SHARE = {"xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}
# What `enabled: true` means when the deployment's default effort is "none".
_ENABLED_FALLBACK = "medium"


@dataclass(frozen=True, slots=True)
class ReasoningSyntax:
    """How one model reasons: its markers, whether its template knows them, and its thinking switch."""

    open: str
    close: str
    native: bool  # the chat template knows the markers (else: prompted thinking)
    switch: str | None  # the template keyword that turns thinking on or off, e.g. "enable_thinking"
    close_insert: str  # what a budget inserts: "\n</think>\n\n"
    close_ids: tuple[int, ...]  # its tokens

    @classmethod
    def for_model(cls, family: Family, tokenizer: Any, prompted: bool) -> ReasoningSyntax | None:
        template = str(getattr(tokenizer, "chat_template", "") or "")
        if family.think is not None and family.think[0] in template:
            (open_, close), native = family.think, True
        elif prompted:
            (open_, close), native = PROMPTED_THINK, False
        else:
            return None  # this model does not reason: reasoning requests have no effect
        switch = family.thinking_switch if native and family.thinking_switch and \
            family.thinking_switch in template else None
        insert = f"\n{close}\n\n"
        ids = tuple(tokenizer(insert, add_special_tokens=False)["input_ids"])
        return cls(open_, close, native, switch, insert, ids)


@dataclass(frozen=True, slots=True)
class ReasoningAsk:
    """What a request asked for, checked for consistency."""

    think: bool | None  # None: the request did not say
    effort: str | None = None
    max_tokens: int | None = None
    exclude: bool = False


def read_request(req: ChatCompletionRequest) -> ReasoningAsk:
    r = req.reasoning
    if r is None and req.reasoning_effort is None:
        return ReasoningAsk(think=None)
    effort = r.effort if r is not None else None
    if effort is not None and req.reasoning_effort is not None and effort != req.reasoning_effort:
        raise invalid(f"'reasoning.effort' ({effort}) and 'reasoning_effort' ({req.reasoning_effort}) "
                      "disagree; give one of them", "reasoning_effort", "invalid_reasoning")
    effort = effort or req.reasoning_effort
    max_tokens = r.max_tokens if r is not None else None
    enabled = r.enabled if r is not None else None
    if max_tokens is not None and max_tokens < 0:
        raise invalid(f"'reasoning.max_tokens' must be at least 0, got {max_tokens}", "reasoning.max_tokens",
                      "invalid_reasoning")
    off = effort == "none" or enabled is False or max_tokens == 0
    if off and ((max_tokens or 0) > 0 or enabled is True or effort not in (None, "none")):
        raise invalid("'reasoning' both turns thinking off (enabled false, effort none or max_tokens 0) "
                      "and asks for it", "reasoning", "invalid_reasoning")
    exclude = bool(r is not None and r.exclude)
    return ReasoningAsk(think=not off, effort=None if effort == "none" else effort, max_tokens=max_tokens,
                        exclude=exclude)


@dataclass(slots=True)
class ReasoningMode:
    """The reasoning decision for one request."""

    syntax: ReasoningSyntax
    think: bool  # the request thinks
    ask: ReasoningAsk
    default_effort: str
    section: bool = False  # the prompt opens a reasoning section (set by finish_prompt)

    @property
    def template_options(self) -> dict[str, Any]:
        return {self.syntax.switch: self.think} if self.syntax.switch else {}

    @property
    def exclude(self) -> bool:
        return self.ask.exclude

    def finish_prompt(self, text: str) -> str:
        """The rendered prompt, ending with the opening marker when the answer starts with reasoning."""
        opened = text.rstrip().endswith(self.syntax.open)
        if self.think and not opened:
            text += self.syntax.open + "\n"
        # A template without a switch may open the section even when thinking is off: a budget of 0 closes it.
        self.section = self.think or opened
        return text

    def budget(self, max_new_tokens: int) -> ThinkingBudget | None:
        if not self.section:
            return None
        if not self.think:
            tokens = 0
        elif self.ask.max_tokens is not None:
            tokens = self.ask.max_tokens
        else:
            effort = self.ask.effort or self.default_effort
            if effort == "none":
                effort = _ENABLED_FALLBACK
            tokens = max(1, int(EFFORT_SHARE[effort] * max_new_tokens))
        return ThinkingBudget(max_tokens=tokens, close_text=self.syntax.close, close_ids=self.syntax.close_ids,
                              close_insert=self.syntax.close_insert)


def decide(req: ChatCompletionRequest, syntax: ReasoningSyntax | None,
           settings: ReasoningSettings) -> ReasoningMode | None:
    """Whether this request thinks; None for models that do not reason (their requests are unaffected)."""
    ask = read_request(req)
    if syntax is None:
        return None
    if ask.think is None:  # silent requests: reasoning models think at the default effort, prompted ones not
        think = syntax.native and settings.effort != "none"
    else:
        think = ask.think
    return ReasoningMode(syntax=syntax, think=think, ask=ask, default_effort=settings.effort)


_THINKING, _AFTER, _ANSWER = range(3)


@dataclass(slots=True)
class ReasoningSplitter:
    """Splits one choice's output, which starts inside the reasoning section, into reasoning and answer.

    Works on text, whatever the chunking: a closing marker split across events is found, and text that
    could still turn out to be (the start of) the marker or the whitespace before it is held back. The
    answer's leading whitespace is dropped, and so are markers the model writes again in its answer.
    Reasoning tokens are the sampled tokens whose text lies in the reasoning (markers and surrounding
    whitespace excluded, inserted tokens never counted), so they never exceed the budget the engine enforced.
    """

    open: str
    close: str
    phase: int = _THINKING
    reasoning: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    _held: str = ""
    _held_at: int = 0  # offset of _held in the choice's output
    _received: int = 0
    _body_start: int | None = None
    _body_end: int = 0
    _spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, tokens) while thinking

    def feed(self, event: EngineEvent) -> tuple[str, EngineEvent]:
        """One engine event -> (new reasoning text, the event's answer part as an event)."""
        start, phase = self._received, self.phase
        self._received += len(event.text)
        final = event.finish_reason is not None
        reasoning, answer = "", ""
        if phase == _THINKING:
            if not event.forced:
                self._spans.append((start, self._received, len(event.token_ids)))
            reasoning, answer = self._think(event.text, final)
        else:
            answer = self._answer(event.text, final)
        owns_tokens = phase == _ANSWER or bool(answer)
        return reasoning, EngineEvent(
            index=event.index, token_ids=event.token_ids if owns_tokens else [], text=answer,
            logprobs=event.logprobs if owns_tokens else None, finish_reason=event.finish_reason,
            facts=event.facts)

    @property
    def text(self) -> str:
        return "".join(self.reasoning)

    def _think(self, text: str, final: bool) -> tuple[str, str]:
        buf, offset = self._held + text, self._held_at
        at = buf.find(self.close)
        if at >= 0:
            out = self._emit(buf[:at].rstrip(), offset)
            self.phase = _AFTER
            self._count()
            self._held = ""
            return out, self._answer(buf[at + len(self.close):], final)
        if final:  # the output ended inside the reasoning: what was held back is reasoning too
            out = self._emit(buf.rstrip(), offset)
            self._held = ""
            self._count()
            return out, ""
        cut = len(buf) - partial_suffix(buf, self.close)
        while cut > 0 and buf[cut - 1].isspace():
            cut -= 1
        out = self._emit(buf[:cut], offset)
        self._held, self._held_at = buf[cut:], offset + cut
        return out, ""

    def _emit(self, text: str, offset: int) -> str:
        if self._body_start is None:
            stripped = text.lstrip()
            offset += len(text) - len(stripped)
            text = stripped
            if not text:
                return ""
            self._body_start = offset
        if text:
            self._body_end = offset + len(text)
            self.reasoning.append(text)
        return text

    def _answer(self, text: str, final: bool) -> str:
        """Answer text, without its leading whitespace and without stray markers the model writes again."""
        markers = (self.open, self.close)
        buf = _strip_markers(self._held + text, markers)
        keep = 0 if final else _pending_markers(buf, markers)
        out, self._held = buf[: len(buf) - keep], buf[len(buf) - keep:]
        if self.phase == _AFTER:
            out = out.lstrip()
            if out:
                self.phase = _ANSWER
        return out

    def _count(self) -> None:
        start, end = self._body_start, self._body_end
        if start is not None:
            self.reasoning_tokens = sum(
                n for s, e, n in self._spans if (s < end and e > start if e > s else start <= s < end))
        self._spans = []


def _strip_markers(text: str, markers: tuple[str, ...]) -> str:
    """`text` without the markers, removed until none is left: removing one may join another
    ("<thi</think>nk>" -> "")."""
    while any(m in text for m in markers):
        for m in markers:
            text = text.replace(m, "")
    return text


def _pending_markers(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that later text could still remove: a run of proper beginnings
    of markers, each completed (innermost first) by what follows, e.g. "<thi</thi" + "nk>nk>"."""
    longest = max(len(m) for m in markers)
    ok = [False] * len(text) + [True]  # ok[i]: text[i:] is such a run
    best, misses = len(text), 0
    for i in range(len(text) - 1, -1, -1):
        ok[i] = any(ok[j] and any(m.startswith(text[i:j]) and j - i < len(m) for m in markers)
                    for j in range(i + 1, min(len(text), i + longest - 1) + 1))
        if ok[i]:
            best, misses = i, 0
        else:
            misses += 1
            if misses >= longest:  # a run cannot reach past this many positions that start none
                break
    return len(text) - best
