"""Range and consistency checks on a decoded request; every failure is a 400 that names its parameter."""

from __future__ import annotations

import re

import msgspec

from core.errors import APIError, clip, invalid
from core.protocol import AssistantMessage, ChatCompletionRequest, ImagePart, TextPart, ToolMessage, UserMessage
from core.settings import Settings
from engines.base import ModelInfo

_NAME = re.compile(r"[a-zA-Z0-9_]{1,64}")

# logit_bias is read from its raw JSON, which the decoder has already found well-formed.
_WS = re.compile(rb"[ \t\n\r]*")
_KEY = re.compile(rb'"(?:[^"\\]|\\.){0,64}"')  # a JSON string of at most 64 bytes (a token id is shorter)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ECHO = 32  # characters of a wrong key quoted in the error
BIAS_LIMIT = 100.0  # OpenAI's range for a bias: [-100, 100]


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


def _echo(text: str) -> str:
    return text if len(text) <= _ECHO else text[:_ECHO] + "..."


def _past_space(data: memoryview, pos: int) -> int:
    space = _WS.match(data, pos)
    return space.end() if space is not None else pos


def _not_a_token(key: str, vocab_size: int | None) -> APIError:
    ids = f"0 to {vocab_size - 1}" if vocab_size is not None else "0 or more"
    return invalid(f"'logit_bias' key '{_echo(key)}' is not a token id of this model (ids are {ids})", "logit_bias")


def _token_id(key: str, vocab_size: int | None) -> int:
    negative = key.startswith("-")
    digits = key[1:] if negative else key
    if not (digits.isascii() and digits.isdigit()):
        raise invalid(f"'logit_bias' keys must be token ids written as decimal integers, got '{_echo(key)}'",
                      "logit_bias")
    token = int(digits)  # at most 64 digits (the key pattern): far below int()'s digit limit
    if negative or (vocab_size is not None and token >= vocab_size):
        raise _not_a_token(key, vocab_size)
    return token


def logit_bias(raw: msgspec.Raw, limit: int, vocab_size: int | None) -> dict[int, float]:
    """The request's `logit_bias` as {token id: bias}; {} when it is absent or null.

    It is read from the raw JSON one entry at a time, so entry `limit` + 1 is refused before anything bigger
    than `limit` entries exists: a 32 MiB body holds millions of entries, and a dict of them all would cost
    seconds and hundreds of MiB. Each step's work is linear in the bytes it passes (the patterns are bounded),
    and a key longer than 64 bytes, which no token id is, is refused unread.
    """
    data = memoryview(raw)
    if not data or data == b"null":
        return {}
    if data[:1] != b"{":
        raise invalid("'logit_bias' must be an object that maps token ids to numbers", "logit_bias",
                      "invalid_type")
    bias: dict[int, float] = {}
    entries = 0
    pos = _past_space(data, 1)
    if data[pos : pos + 1] == b"}":
        return bias
    while True:  # at a key
        entries += 1
        if entries > limit:
            raise invalid(f"'logit_bias' has more than {limit} entries; the limit is {limit}", "logit_bias")
        key_match = _KEY.match(data, pos)
        if key_match is None:  # longer than any token id: only its start is read, and quoted
            raise _not_a_token(bytes(data[pos + 1 : pos + 2 + _ECHO]).decode("utf-8", "replace"), vocab_size)
        key = msgspec.json.decode(key_match.group())
        token = _token_id(key, vocab_size)
        pos = _past_space(data, _past_space(data, key_match.end()) + 1)  # past the ':'
        number = _NUMBER.match(data, pos)
        if number is None:  # a string, object, array, boolean or null
            raise invalid(f"'logit_bias' values must be numbers; the value of '{_echo(key)}' is not",
                          "logit_bias", "invalid_type")
        value = float(number.group())
        if not -BIAS_LIMIT <= value <= BIAS_LIMIT:
            raise invalid(f"'logit_bias' values must be in [-100, 100], got {value} for '{_echo(key)}'",
                          "logit_bias")
        bias[token] = value  # a token named twice ("7" and "07"): the later value counts, as with JSON keys
        pos = _past_space(data, number.end())
        if data[pos : pos + 1] == b"}":
            return bias
        pos = _past_space(data, pos + 1)  # past the ','


def _check_size(content: object, i: int, settings: Settings) -> None:
    if isinstance(content, list) and len(content) > settings.requests.max_content_parts:
        raise invalid(f"'messages[{i}].content' has {len(content)} parts; the limit is "
                      f"{settings.requests.max_content_parts}", f"messages[{i}].content", "too_many_content_parts")
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(len(part.text) for part in content if isinstance(part, TextPart))
    else:
        return
    if chars > settings.requests.max_message_chars:
        raise invalid(f"'messages[{i}].content' has {chars} characters of text; the limit is "
                      f"{settings.requests.max_message_chars}", f"messages[{i}].content", "message_too_long")


def validate_request(req: ChatCompletionRequest, settings: Settings, info: ModelInfo) -> None:
    _check_messages(req, settings, info)
    _check_sampling(req, settings, info)


def _check_messages(req: ChatCompletionRequest, settings: Settings, info: ModelInfo) -> None:
    if not req.messages:
        raise invalid("'messages' must contain at least one message", "messages", "empty_array")
    if len(req.messages) > settings.requests.max_messages:
        raise invalid(f"'messages' has {len(req.messages)} entries; the limit is {settings.requests.max_messages}",
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
                if images > settings.images.max_images:
                    raise invalid(f"Too many images: a request may carry at most {settings.images.max_images}",
                                  f"messages[{i}].content[{j}]", "too_many_images")
        if isinstance(message, AssistantMessage):
            if content is None and not message.tool_calls:
                raise invalid(f"'messages[{i}]': an assistant message needs 'content' or 'tool_calls'",
                              f"messages[{i}].content")
        elif isinstance(message, ToolMessage):
            if not message.tool_call_id:
                raise invalid(f"'messages[{i}].tool_call_id' must not be empty", f"messages[{i}].tool_call_id")


def _check_sampling(req: ChatCompletionRequest, settings: Settings, info: ModelInfo) -> None:
    _range(req.temperature, "temperature", 0, 2)
    _range(req.top_p, "top_p", 0, 1, low_open=True)
    _range(req.min_p, "min_p", 0, 1)
    _range(req.frequency_penalty, "frequency_penalty", -2, 2)
    _range(req.presence_penalty, "presence_penalty", -2, 2)
    if req.top_k is not None and req.top_k < -1:
        raise invalid(f"'top_k' must be -1 or 0 (disabled) or a positive integer, got {req.top_k}", "top_k")
    _range(req.n, "n", 1, settings.requests.max_n)
    for key in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, key)
        if value is not None and value < 1:
            raise invalid(f"'{key}' must be at least 1, got {value}", key)
        if value is not None and settings.requests.max_tokens_limit and value > settings.requests.max_tokens_limit:
            raise invalid(f"'{key}' must be at most {settings.requests.max_tokens_limit}, got {value}", key)
    if req.prompt_truncate_len is not None and req.prompt_truncate_len < 1:
        raise invalid(f"'prompt_truncate_len' must be at least 1, got {req.prompt_truncate_len}",
                      "prompt_truncate_len")
    stops = req.stop_strings()
    if len(stops) > settings.requests.max_stop:
        raise invalid(f"'stop' accepts at most {settings.requests.max_stop} sequences, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise invalid("'stop' sequences must not be empty", "stop")
    if req.top_logprobs is not None:
        _range(req.top_logprobs, "top_logprobs", 0, settings.requests.max_top_logprobs)
        if req.top_logprobs > 0 and not req.logprobs:
            raise invalid("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
    logit_bias(req.logit_bias, settings.requests.max_logit_bias, info.vocab_size)
