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


def test_the_kernels_picked_for_this_cpu_are_shown_and_serve(default_server, qwen):
    """--quantize auto (the default): the loader timed the candidates on this CPU; /ready says which it kept,
    the fingerprint names it, and the model answers on it."""
    import hashlib

    import httpx

    from engines.embedded.kernels import candidates

    kernels = httpx.get(f"{default_server.base_url}/ready", timeout=30).json()["kernels"]
    assert kernels["chosen_by"] == "measured"
    assert set(kernels["decode_ms"]) == set(candidates("auto"))
    kept = f"{kernels['weights']}-{kernels['library']}" if kernels["library"] else kernels["weights"]
    assert kernels["decode_ms"][kept] <= min(kernels["decode_ms"].values()) * 1.05
    resp = qwen.chat.completions.create(model="default", temperature=0, max_tokens=12,
                                        messages=[{"role": "user", "content": "Say hello."}])
    assert resp.choices[0].message.content
    expected = "fp_" + hashlib.sha256(f"{resp.model}:{kept}".encode()).hexdigest()[:10]
    assert resp.system_fingerprint == expected


SHAPES = '''import math


def area(radius: float) -> float:
    """The area of a circle."""
    return math.pi * radius**2


def describe(radius: float) -> str:
    return f"a circle of radius {radius} has area {area(radius):.2f}"
'''


def engine_figures(base_url: str) -> dict[str, float]:
    import httpx

    figures = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith("lodestar_engine_") and not line.startswith("#"):
            name, value = line.split()
            figures[name.removeprefix("lodestar_engine_").removesuffix("_total")] = float(value)
    return figures


def test_an_edit_is_copied_through_prompt_lookup(default_server, qwen):
    """A file returned whole after a rename: most of the reply is in the prompt, so prompt lookup drafts it
    and the model keeps the drafts; the reply arrives in fewer decode steps than it has tokens."""
    before = engine_figures(default_server.base_url)
    stream = qwen.chat.completions.create(
        model="default", temperature=0, max_tokens=200, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Rename the function `area` to `surface` everywhere. Reply with "
                                              f"the whole file in one Python code block.\n\n```python\n{SHAPES}```"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    after = engine_figures(default_server.base_url)
    assert "def surface(radius: float) -> float:" in text and "area(" not in text, text
    assert "import math" in text and "def describe(radius: float) -> str:" in text, text
    tokens = chunks[-1].usage.completion_tokens
    kept = after["lookup_kept_tokens"] - before["lookup_kept_tokens"]
    steps = after["decode_steps"] - before["decode_steps"]
    assert kept >= tokens // 3, (kept, tokens)
    assert steps < tokens * 0.7, (steps, tokens)
