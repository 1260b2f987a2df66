"""Model-family quirks, in one registry: end-of-turn tokens, reasoning markers and switch, tool-call markers.

Adding a family is adding one entry. Nothing else in the code base asks which family a model is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    # Tokens that end an assistant turn, besides the tokenizer's own EOS token.
    end_of_turn: tuple[str, ...] = ()
    # Markers around reasoning, e.g. ("<think>", "</think>"), for families that reason natively (when the
    # chat template mentions the opening marker).
    think: tuple[str, str] | None = None
    # Markers around a tool call, e.g. ("<tool_call>", "</tool_call>").
    tool_call: tuple[str, str] | None = None
    # The chat-template keyword that switches thinking on or off, e.g. "enable_thinking".
    thinking_switch: str | None = None
    # Text that a vision model's image processor reads as an image placeholder (SGLang's Qwen-VL processor
    # also takes the legacy "<image>"): in message text it would bind to no image, so it is refused.
    image_placeholders: tuple[str, ...] = ()


_QWEN_VL_PLACEHOLDERS = ("<image>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")

FAMILIES: dict[str, Family] = {
    "chatml": Family("chatml", end_of_turn=("<|im_end|>", "<|endoftext|>")),
    "qwen2": Family("qwen2", end_of_turn=("<|im_end|>", "<|endoftext|>"),
                    tool_call=("<tool_call>", "</tool_call>"), image_placeholders=_QWEN_VL_PLACEHOLDERS),
    "qwen3": Family("qwen3", end_of_turn=("<|im_end|>", "<|endoftext|>"), think=("<think>", "</think>"),
                    tool_call=("<tool_call>", "</tool_call>"), thinking_switch="enable_thinking",
                    image_placeholders=_QWEN_VL_PLACEHOLDERS),
    "deepseek_r1": Family("deepseek_r1", end_of_turn=("<｜end▁of▁sentence｜>",), think=("<think>", "</think>")),
    "llama3": Family("llama3", end_of_turn=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")),
    "generic": Family("generic"),
}

# The markers of "prompted thinking" (settings.reasoning.prompted_thinking) for families that do not reason natively.
PROMPTED_THINK = ("<think>", "</think>")

# Templates that identify a family whatever the architecture (distilled models reuse other architectures).
_BY_TEMPLATE = (("<｜Assistant｜>", "deepseek_r1"),)
# transformers model_type -> family, for models whose template is the family's own.
_BY_MODEL_TYPE = {"qwen2": "qwen2", "qwen3": "qwen3", "qwen2_5_vl": "qwen2"}


def detect_family(model_type: str, chat_template: str | None) -> Family:
    """Pick the family from the template's signature, the architecture, or what the template looks like."""
    template = chat_template or ""
    for signature, name in _BY_TEMPLATE:
        if signature in template:
            return FAMILIES[name]
    if model_type in _BY_MODEL_TYPE:
        return FAMILIES[_BY_MODEL_TYPE[model_type]]
    if "<|im_start|>" in template:
        return FAMILIES["chatml"]
    if "<|start_header_id|>" in template:
        return FAMILIES["llama3"]
    return FAMILIES["generic"]


def end_of_turn_ids(family: Family, tokenizer: Any) -> tuple[int, ...]:
    """The token ids that stop generation: the family's end-of-turn tokens plus the tokenizer's EOS."""
    ids: set[int] = set()
    vocab = tokenizer.get_vocab()
    for token in family.end_of_turn:
        if token in vocab:
            ids.add(vocab[token])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))
