"""The wire schema of requests: the chat-completion body and its messages, as msgspec Structs (the
response bodies are in core/replies.py).

Requests ignore unknown fields (as OpenAI does) and accept `null` wherever a field is optional. Value
ranges are checked in chat/validation.py so that each error can name its parameter.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(msgspec.Struct):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


ContentPart = TextPart | ImagePart
Content = str | list[ContentPart]


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(msgspec.Struct, tag_field="role", tag="system"):
    content: Content
    name: str | None = None


class DeveloperMessage(msgspec.Struct, tag_field="role", tag="developer"):
    content: Content
    name: str | None = None


class UserMessage(msgspec.Struct, tag_field="role", tag="user"):
    content: Content
    name: str | None = None


class AssistantMessage(msgspec.Struct, tag_field="role", tag="assistant"):
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


class ToolMessage(msgspec.Struct, tag_field="role", tag="tool"):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class FunctionDefinition(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema for the arguments object
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaSpec(msgspec.Struct):
    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct, tag_field="type", tag="text"):
    pass


class JSONObjectFormat(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class JSONSchemaFormat(msgspec.Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaSpec


ResponseFormat = TextFormat | JSONObjectFormat | JSONSchemaFormat


Effort = Literal["xhigh", "high", "medium", "low", "minimal", "none"]


class Reasoning(msgspec.Struct):
    """Seed 003's reasoning object."""

    effort: Effort | None = None
    max_tokens: int | None = None  # exact cap on reasoning tokens
    exclude: bool | None = None  # keep the reasoning out of the response (still counted in usage)
    enabled: bool | None = None


class ChatCompletionRequest(msgspec.Struct):
    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    n: int | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    ignore_eos: bool | None = None  # vLLM/SGLang extension: keep generating past end-of-turn tokens
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: Effort | None = None  # OpenAI's spelling
    prompt_truncate_len: int | None = None  # extension: drop the oldest turns to fit this many prompt tokens
    # token id (a string of decimal digits) -> bias. Kept as the raw JSON: chat/validation.py bounds its size
    # before anything is built from it (a 32 MiB body could hold millions of entries). Empty when absent.
    logit_bias: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)

    def stop_strings(self) -> list[str]:
        """`stop` as a list, whichever of its shapes the request used (one string, a list, or none)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
