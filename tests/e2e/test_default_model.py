"""Where answer quality matters: the default model (Qwen2.5-Coder-0.5B-Instruct, int8) end to end."""

from __future__ import annotations

import pytest
from openai import OpenAI

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def qwen(default_server):
    return OpenAI(base_url=f"{default_server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_answers_a_factual_question(qwen):
    resp = qwen.chat.completions.create(
        model="default", temperature=0, max_tokens=30,
        messages=[{"role": "system", "content": "You are a concise assistant."},
                  {"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
    assert resp.model == "qwen2.5-coder-0.5b-instruct"
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"


def test_streams_code(qwen):
    stream = qwen.chat.completions.create(
        model="qwen", temperature=0, max_tokens=80, stream=True,
        messages=[{"role": "user", "content": "Write a Python function add(a, b) that returns a + b. "
                                              "Only the code."}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "def add(a, b)" in text
    assert "return a + b" in text


def test_multi_turn_context(qwen):
    resp = qwen.chat.completions.create(
        model="default", temperature=0, max_tokens=20,
        messages=[{"role": "user", "content": "My name is Ada. Remember it."},
                  {"role": "assistant", "content": "Nice to meet you, Ada! I'll remember your name."},
                  {"role": "user", "content": "What is my name?"}])
    assert "Ada" in resp.choices[0].message.content
