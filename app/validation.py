"""Range and consistency checks on a decoded request; every failure is a 400 that names its parameter."""

from __future__ import annotations

import re

from app.errors import APIError, clip, invalid
from app.protocol import AssistantMessage, ChatCompletionRequest, ImagePart, TextPart, ToolMessage, UserMessage
from app.settings import Settings
from engines.base import ModelInfo

_NAME = re.compile(r"[a-zA-Z0-9_]{1,64}")


def resolve_model(name: str, info: ModelInfo) -> str:
    if name == info.id or name in info.aliases:
        return info.id
    raise APIError(404, f"The model '{clip(name)}' does not exist or you do not have access to it. "
                   f"This server serves '{info.id}' (aliases: {', '.join(info.aliases) or 'none'}).",
                   param="model", code="model_not_found")


def _range(value: float | int | None, name: str, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    if value != value or value > high or value < low or (low_open and value == low):  # NaN fails too
        bracket = "(" if low_open else "["
        raise invalid(f"'{name}' must be in {bracket}{low:g}, {high:g}], got {value}", name)


def _check_size(content: object, i: int, settings: Settings) -> None:
    if isinstance(content, list) and len(content) > settings.max_content_parts:
        raise invalid(f"'messages[{i}].content' has {len(content)} parts; the limit is "
                      f"{settings.max_content_parts}", f"messages[{i}].content", "too_many_content_parts")
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(len(part.text) for part in content if isinstance(part, TextPart))
    else:
        return
    if chars > settings.max_message_chars:
        raise invalid(f"'messages[{i}].content' has {chars} characters of text; the limit is "
                      f"{settings.max_message_chars}", f"messages[{i}].content", "message_too_long")


def validate_request(req: ChatCompletionRequest, settings: Settings, info: ModelInfo) -> None:
    if not req.messages:
        raise invalid("'messages' must contain at least one message", "messages", "empty_array")
    if len(req.messages) > settings.max_messages:
        raise invalid(f"'messages' has {len(req.messages)} entries; the limit is {settings.max_messages}",
                      "messages", "too_many_messages")
    images = 0
    for i, message in enumerate(req.messages):
        name = getattr(message, "name", None)
        if name is not None and not _NAME.fullmatch(name):
            raise invalid(f"'messages[{i}].name' must match ^[a-zA-Z0-9_]{{1,64}}$", f"messages[{i}].name")
        content = message.content
        _check_size(content, i, settings)
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, ImagePart):
                    continue
                if not isinstance(message, UserMessage):
                    raise invalid(f"Image content is only allowed in user messages; messages[{i}] is a "
                                  f"{message.__struct_config__.tag} message", f"messages[{i}].content[{j}]",
                                  "invalid_content_part")
                if not info.vision:
                    raise invalid(f"The model '{info.id}' does not accept images "
                                  f"(found an image_url part at messages[{i}].content[{j}])",
                                  f"messages[{i}].content[{j}]", "image_input_not_supported")
                images += 1
                if images > settings.max_images:
                    raise invalid(f"Too many images: a request may carry at most {settings.max_images}",
                                  f"messages[{i}].content[{j}]", "too_many_images")
        if isinstance(message, AssistantMessage):
            if content is None and not message.tool_calls:
                raise invalid(f"'messages[{i}]': an assistant message needs 'content' or 'tool_calls'",
                              f"messages[{i}].content")
        elif isinstance(message, ToolMessage):
            if not message.tool_call_id:
                raise invalid(f"'messages[{i}].tool_call_id' must not be empty", f"messages[{i}].tool_call_id")

    _range(req.temperature, "temperature", 0, 2)
    _range(req.top_p, "top_p", 0, 1, low_open=True)
    _range(req.min_p, "min_p", 0, 1)
    _range(req.frequency_penalty, "frequency_penalty", -2, 2)
    _range(req.presence_penalty, "presence_penalty", -2, 2)
    if req.top_k is not None and req.top_k < -1:
        raise invalid(f"'top_k' must be -1 or 0 (disabled) or a positive integer, got {req.top_k}", "top_k")
    _range(req.n, "n", 1, settings.max_n)
    for key in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, key)
        if value is not None and value < 1:
            raise invalid(f"'{key}' must be at least 1, got {value}", key)
        if value is not None and settings.max_tokens_limit and value > settings.max_tokens_limit:
            raise invalid(f"'{key}' must be at most {settings.max_tokens_limit}, got {value}", key)
    if req.prompt_truncate_len is not None and req.prompt_truncate_len < 1:
        raise invalid(f"'prompt_truncate_len' must be at least 1, got {req.prompt_truncate_len}",
                      "prompt_truncate_len")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > settings.max_stop:
        raise invalid(f"'stop' accepts at most {settings.max_stop} sequences, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise invalid("'stop' sequences must not be empty", "stop")
    if req.top_logprobs is not None:
        _range(req.top_logprobs, "top_logprobs", 0, settings.max_top_logprobs)
        if req.top_logprobs > 0 and not req.logprobs:
            raise invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
