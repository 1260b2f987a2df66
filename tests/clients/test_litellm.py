"""litellm's completion() with the generic OpenAI provider ("openai/<model>" and api_base)."""

from __future__ import annotations

import os

import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # also set in conftest.py: never fetch the price map

import litellm  # noqa: E402

from tests.clients.shared import CAPITAL  # noqa: E402

pytestmark = [
    pytest.mark.default_model,
    # litellm's own TypedDicts, built by pydantic on first use; nothing to do with the wire.
    pytest.mark.filterwarnings("ignore:Item.* using the `ReadOnly` qualifier:UserWarning"),
]

MESSAGES = [{"role": "user", "content": CAPITAL}]


def complete(base_url, **kw):
    return litellm.completion(model="openai/default", api_base=base_url, api_key="unused", messages=MESSAGES,
                              temperature=0, max_tokens=40, num_retries=0, timeout=300, **kw)


def test_completion(base_url):
    reply = complete(base_url)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0


def test_stream_gives_the_same_text(base_url):
    whole = complete(base_url).choices[0].message.content
    text = "".join(chunk.choices[0].delta.content or "" for chunk in complete(base_url, stream=True)
                   if chunk.choices)
    assert text and text == whole
