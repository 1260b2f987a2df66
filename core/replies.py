"""The wire schema of responses: completions, stream chunks, usage, model lists and errors, as msgspec
Structs, and the one JSON encoder that writes them."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import msgspec

from core.protocol import ToolCall

Item = TypeVar("Item")


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenLogprobOut] | None


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ResponseMessage(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletion(msgspec.Struct, omit_defaults=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    confidence_score: float | None = None  # extension; omitted unless enabled or logprobs were asked


class FunctionCallDelta(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionCallDelta | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    # With stream_options.include_usage every chunk says `"usage": null` but OpenAI's last one (empty
    # choices); without it, only the finish chunk carries usage (as some providers send it). UNSET: left out.
    usage: Usage | None | msgspec.UnsetType = msgspec.UNSET
    confidence_score: float | None = None


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    aliases: list[str]
    context_length: int
    vision: bool
    object: str = "model"


class ListObject(msgspec.Struct, Generic[Item]):
    """OpenAI's list envelope: {"data": [...], "object": "list"}."""

    data: list[Item]
    object: str = "list"


class ModelList(ListObject[ModelCard]):
    """GET /v1/models."""


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return encoder.encode(value)
