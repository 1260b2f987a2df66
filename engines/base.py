"""The engine interface: token ids in, token events out.

Nothing about HTTP, OpenAI or chat messages crosses this line, so the embedded CPU engine and the
SGLang runtime can sit behind the same pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from core.errors import APIError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    aliases: tuple[str, ...]
    context_length: int
    vision: bool
    created: int
    owned_by: str = "lodestar"
    image_token_id: int | None = None  # the placeholder a vision model's prompt repeats once per image token
    vocab_size: int | None = None  # width of the model's logits: token ids are 0 .. vocab_size - 1 (None: unknown)
    # Its answer to tool results is better with the tools left out of the prompt (small models retype
    # the call they made; docs/tools.md#answering-a-tool-result)
    hides_tools_after_results: bool = False
    # The embedded engine's Linear layers: weight format, matmul library, how chosen (kernels.py; /ready)
    kernels: dict[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    # Generate past the model's own end-of-sequence tokens too (then stop_token_ids is empty); SGLang
    # stops at them unless told (its sampling_params.ignore_eos).
    ignore_eos: bool = False
    min_new_tokens: int = 0  # stop tokens are not sampled before this many new tokens (SGLang's name)
    # A hint: an engine may end a choice once its text contains one of these (SGLang does); the pipeline
    # cuts the text at stop strings itself either way. Empty when stop strings must not apply to all of
    # the output (reasoning is exempt).
    stop: tuple[str, ...] = ()
    # Added to the logits of these token ids before sampling (OpenAI's logit_bias, validated: ids inside the
    # vocabulary, values in [-100, 100]). A token the grammar or a stop-token mask bans stays banned.
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Right after one of these tokens (a tool call's close marker), end the choice once the model gives its
    # stop tokens at least `end_probability` of the probability the grammar leaves (0: never): a small model
    # that would rather end there than call again gets to, instead of calling until max_tokens.
    end_after_ids: tuple[int, ...] = ()
    end_probability: float = 0.0


@dataclass(frozen=True, slots=True)
class EngineImage:
    """One image made ready for an engine: its prompt takes `num_tokens` copies of the placeholder token."""

    digest: str  # content address (image bytes, pixel budget, processing): equal digests, equal embeddings
    num_tokens: int
    data: Any  # engine-specific, e.g. (patches, grid) for the embedded engine


@dataclass(frozen=True, slots=True)
class Constraint:
    """A grammar the sampled tokens must follow (tool calls, response_format), built once in tools/."""

    grammar: str  # llguidance Lark grammar (may embed JSON schemas with %json)
    key: str  # content hash of the grammar: equal keys, equal compiled grammars


@dataclass(frozen=True, slots=True)
class ThinkingBudget:
    """Cap a reasoning section the prompt has opened: after `max_tokens` generated tokens without
    `close_text`, the engine inserts `close_ids` itself and the model goes on with its answer. A stop
    token sampled inside the section is replaced by `close_ids` too, and no stop token is sampled after the
    close until the answer has begun, so an answer always follows.
    A constraint, if any, applies from the end of the section on."""

    max_tokens: int
    close_text: str  # e.g. "</think>"
    close_ids: tuple[int, ...]  # e.g. the tokens of "\n</think>\n\n"
    close_insert: str = ""  # the text of close_ids


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    # The prompt as the template wrote it: one placeholder token per image, which the engine expands to the
    # image's num_tokens (the embedded engine itself, SGLang in its worker).
    prompt_ids: list[int]
    sampling: SamplingParams
    n: int = 1
    logprobs: bool = False  # log-probability of each sampled token
    top_logprobs: int = 0  # how many alternatives per position
    session_key: str | None = None  # "<key digest>:<session id>": a routing hint, same session same worker
    tenant: str | None = None  # who sent it (an API key's digest): batch slots are shared fairly between tenants
    images: list[EngineImage] = field(default_factory=list)  # in prompt order
    constraint: Constraint | None = None
    thinking: ThinkingBudget | None = None  # only for engines whose `thinking_budgets` is true

    @property
    def prompt_tokens(self) -> int:
        """The prompt's size as the model sees it: each image's placeholder counts as its tokens."""
        return prompt_size(self.prompt_ids, self.images)


def prompt_size(prompt_ids: list[int], images: list[EngineImage]) -> int:
    return len(prompt_ids) + sum(image.num_tokens - 1 for image in images)


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the engine knows of the whole request, not of one token."""

    prompt_tokens: int  # the prompt as the model saw it (image tokens counted)
    cached_tokens: int = 0  # of those, taken from a prefix cache
    queued_s: float | None = None  # its wait for a batch slot, if the engine knows


@dataclass(slots=True)
class EngineEvent:
    """New tokens of one choice; the last event of a choice carries its finish reason. Request-level facts
    ride on a choice's first and last events only (`facts`; None on the others)."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    facts: RequestFacts | None = None
    forced: bool = False  # the engine inserted these tokens (a reasoning budget's close), it did not sample them


class EngineError(Exception):
    """The engine failed to serve a request; `status` says how the HTTP layer should report it."""

    def __init__(self, message: str, *, status: int = 500, code: str = "engine_error",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    def as_api_error(self, param: str | None = None) -> APIError:
        """The one way an engine failure becomes an OpenAI error (a response, or an event in a stream)."""
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after else None
        return APIError(self.status, str(self), param=param, code=self.code, headers=headers)


class Engine(Protocol):
    model_info: ModelInfo
    # Whether the engine enforces EngineRequest.thinking inside one generation; if not, the pipeline
    # enforces reasoning budgets with two calls.
    thinking_budgets: bool

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Admit the request (raising EngineError at once if refused) and return its events."""
        ...

    def prepare_constraint(self, constraint: Constraint) -> None:
        """Blocking: get a grammar ready (compile and cache it) before the request is admitted."""
        ...

    def prepare_image(self, image: Any, digest: str, pixel_budget: int) -> EngineImage:
        """Blocking and thread-safe: a decoded RGB image -> what this engine's model takes (vision models)."""
        ...

    def forget_session(self, session_key: str) -> None:
        """The session was deleted or expired: drop what the engine keeps for it (nothing, for most)."""
        ...

    def unavailable(self) -> str | None:
        """None while the engine can take requests; else why it cannot (said by a 503 engine_unavailable)."""
        ...

    def stats(self) -> dict[str, int]:
        """Live load figures, e.g. {"running": sequences decoding, "waiting": requests queued}."""
        ...

    async def close(self) -> None: ...
