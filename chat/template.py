"""Chat messages -> prompt token ids, through the model's own chat template."""

from __future__ import annotations

from typing import Any

import msgspec

from chat.families import Family, end_of_turn_ids
from core.errors import clip, invalid
from core.protocol import (
    AssistantMessage,
    Content,
    ContentPart,
    DeveloperMessage,
    ImagePart,
    Message,
    TextPart,
    ToolMessage,
)


def _text_of(content: Content | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if isinstance(part, TextPart))


def _parts_of(content: list[ContentPart]) -> list[dict[str, Any]]:
    """Content parts as vision templates expect them: the template writes an image's placeholder."""
    return [{"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image"}
            for part in content]


def _template_message(message: Message, vision: bool) -> dict[str, Any]:
    # Templates know system/user/assistant/tool; OpenAI's "developer" role is a system message to them.
    role = "system" if isinstance(message, DeveloperMessage) else message.__struct_config__.tag
    content = message.content
    if vision and isinstance(content, list) and any(isinstance(p, ImagePart) for p in content):
        out: dict[str, Any] = {"role": role, "content": _parts_of(content)}
    else:
        out = {"role": role, "content": _text_of(content)}
    if isinstance(message, AssistantMessage) and message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)}}
            for call in message.tool_calls]
    if isinstance(message, AssistantMessage) and message.reasoning_content:
        out["reasoning_content"] = message.reasoning_content  # reasoning templates decide what to keep
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    name = getattr(message, "name", None)
    if name:
        out["name"] = name
    return out


def _arguments(raw: str) -> Any:
    """Templates render arguments as objects; keep the raw string when it is not JSON."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw


class PromptRenderer:
    def __init__(self, tokenizer: Any, family: Family, *, vision: bool = False) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.family = family
        self.vision = vision
        self.stop_token_ids = end_of_turn_ids(family, tokenizer)
        # The Rust tokenizer itself where there is one: the same ids as transformers' __call__ without its
        # per-call Python work (a relay renders and tokenizes every request; tests/chat/test_template_ids.py).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._encode_fast = backend.encode if backend is not None else None

    def render_text(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                    options: dict[str, Any] | None = None, *, add_generation_prompt: bool = True) -> str:
        """`options` are template keywords such as a thinking switch."""
        conversation = [_template_message(m, self.vision) for m in messages]
        extra = {"tools": tools} if tools else {}
        extra.update(options or {})
        try:
            return self.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False, **extra)
        except Exception as exc:  # the template's own raise_exception(), e.g. role order rules
            raise invalid(f"The model's chat template rejected the messages: {clip(str(exc), 300)}", "messages",
                          "invalid_messages") from exc

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        return self.tokenize(self.render_text(messages, tools))

    def tokenize(self, text: str) -> list[int]:
        if self._encode_fast is not None:
            return self._encode_fast(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
