"""Tool grammars, reasoning budgets (SGLang's own and the two-call fallback) and images through the SGLang
engine, against stand-in workers running the tiny Qwen3 and tiny Qwen2.5-VL fixtures."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from PIL import Image

from tests.sglang.conftest import Deployment, deploy, stop
from tests.sglang.standin import StandIn, build_engine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "Is 91 a prime number?"}]


def usage_reasoning(reply: Any) -> int:
    return reply.usage.completion_tokens_details.reasoning_tokens


def reasoning_text(message: Any) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


@pytest.fixture(scope="module")
def strict(tmp_path_factory, qwen3_engine, tiny_qwen3_model: Path) -> Iterator[Deployment]:
    """A worker started with --enable-strict-thinking and a reasoning parser, under llguidance: SGLang does
    not enforce max_thinking_tokens then (reasoner_grammar_backend.py), so neither does the stand-in."""
    deployment, servers = deploy(tmp_path_factory.mktemp("strict"), str(tiny_qwen3_model),
                                 StandIn(qwen3_engine, name="strict", strict_thinking=True))
    yield deployment
    stop(deployment, servers)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, qwen3_engine, tiny_qwen3_model: Path) -> Iterator[Deployment]:
    deployment, servers = deploy(tmp_path_factory.mktemp("plain"), str(tiny_qwen3_model),
                                 StandIn(qwen3_engine, name="plain"))
    yield deployment
    stop(deployment, servers)


def test_required_tool_call_matches_its_schema(strict: Deployment):
    client = strict.client()
    for seed in range(3):
        reply = client.chat.completions.create(
            model="standin-model", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
            tool_choice="required", parallel_tool_calls=False, max_tokens=120, temperature=1.0, seed=seed,
            reasoning_effort="none")
        calls = reply.choices[0].message.tool_calls
        assert calls and reply.choices[0].finish_reason == "tool_calls", reply
        for call in calls:
            assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    sent = strict.workers[0].requests[-1].sampling_params
    assert sent.ebnf and "get_weather" in sent.ebnf  # the grammar travels as SGLang's `ebnf` (llguidance)


def test_budget_enforced_by_two_calls_with_strict_thinking(strict: Deployment):
    """Issue 20: one call with max_thinking_tokens did nothing on an llguidance worker; two calls do."""
    worker = strict.workers[0]
    for budget in (3, 8):
        before = len(worker.requests)
        reply = strict.client().chat.completions.create(
            model="standin-model", messages=QUESTION, max_tokens=budget + 20, temperature=1.0, seed=1,
            extra_body={"reasoning": {"max_tokens": budget}})
        sent = worker.requests[before:]
        assert len(sent) == 2 and all(r.max_thinking_tokens is None for r in sent)
        assert sent[0].sampling_params.max_new_tokens == budget
        assert 0 < usage_reasoning(reply) <= budget
        assert reasoning_text(reply.choices[0].message)
        assert reply.choices[0].message.content


def test_budget_enforced_by_two_calls_without_strict_thinking(plain: Deployment):
    worker = plain.workers[0]
    budget = 5
    before = len(worker.requests)
    reply = plain.client().chat.completions.create(
        model="standin-model", messages=QUESTION, max_tokens=budget + 20, temperature=1.0, seed=2,
        extra_body={"reasoning": {"max_tokens": budget}})
    sent = worker.requests[before:]
    assert len(sent) == 2 and all(r.max_thinking_tokens is None for r in sent)
    assert sent[0].sampling_params.max_new_tokens == budget
    assert 0 < usage_reasoning(reply) <= budget
    assert reply.choices[0].message.content


# -- images ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vision(tmp_path_factory, tiny_vl_model: Path) -> Iterator[Deployment]:
    deployment, servers = deploy(tmp_path_factory.mktemp("vl"), str(tiny_vl_model),
                                 StandIn(build_engine(str(tiny_vl_model)), name="vl"))
    yield deployment
    stop(deployment, servers)


def png_url(size: tuple[int, int]) -> str:
    image = Image.new("RGB", size, (20, 120, 200))
    for x in range(0, size[0], 5):
        image.putpixel((x, x % size[1]), (255, 255, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_images_reach_sglang_as_checked_data_urls(vision: Deployment):
    client = vision.client()
    text_only = client.chat.completions.create(
        model="standin-model", messages=[{"role": "user", "content": "Describe it."}], max_tokens=5)
    parts = [{"type": "text", "text": "Describe it."},
             {"type": "image_url", "image_url": {"url": png_url((90, 60))}},
             {"type": "image_url", "image_url": {"url": png_url((200, 120))}}]
    reply = client.chat.completions.create(model="standin-model", messages=[{"role": "user", "content": parts}],
                                           max_tokens=5)
    sent = vision.workers[0].requests[-1]
    # A text prompt with one placeholder per image (SGLang expands them) and PNG data URLs, never a URL to fetch.
    assert sent.input_ids is None and sent.text.count("<|image_pad|>") == 2
    assert len(sent.image_data) == 2 and all(u.startswith("data:image/png;base64,") for u in sent.image_data)
    # The prompt as the model sees it, images expanded: Lodestar's count (the worker's own counts the text
    # prompt's single placeholders).
    assert reply.usage.prompt_tokens == vision.workers[0].expanded_prompt_tokens[-1]
    assert reply.usage.prompt_tokens > text_only.usage.prompt_tokens + 2
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("spelling", ["<image>", "<|image_pad|>", "<|vision_start|>"])
def test_placeholder_text_with_images_is_refused(vision: Deployment, spelling: str):
    """SGLang's Qwen-VL processor reads "<image>" in a text prompt as a placeholder too: two for one image."""
    client = vision.client()
    before = len(vision.workers[0].requests)
    parts = [{"type": "text", "text": f"What does {spelling} mean in HTML?"},
             {"type": "image_url", "image_url": {"url": png_url((60, 60))}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="standin-model", messages=[{"role": "user", "content": parts}],
                                       max_tokens=5)
    body = refused.value.body
    assert body["code"] == "invalid_image_placeholder" and body["param"] == "messages[0].content[0].text"
    assert spelling in body["message"] and len(vision.workers[0].requests) == before
    if spelling == "<|image_pad|>":
        return  # the placeholder token itself is refused with or without images (chat/images.py)
    # Without images the text is only text: the worker gets token ids, no placeholder is read.
    reply = client.chat.completions.create(
        model="standin-model", messages=[{"role": "user", "content": f"What does {spelling} mean?"}], max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")
