"""What Lodestar reads from SGLang workers and sends them for request fields that need a worker's help
(issue 20): the context length, ignore_eos, prompt counts of image prompts. No server, no model."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from app.sglang_backend import model_context_length
from engines.base import EngineRequest, RequestFacts, SamplingParams
from engines.sglang.engine import RuntimeFacts, context_length_of
from engines.sglang.replies import ReplyReader
from engines.sglang.wire import generate_body
from tests.sglang.standin import API

FACTS = RuntimeFacts(model_id="m", context_length=0, max_input_tokens=0, vision=False, grammar_backend="llguidance",
                     strict_thinking=False, deterministic=False, incremental=False)


@pytest.mark.parametrize(("config", "expected"), [
    (dict(max_position_embeddings=32768), 32768),
    (dict(max_position_embeddings=4096, rope_scaling={"type": "linear", "factor": 4.0}), 16384),
    (dict(max_position_embeddings=8192, rope_scaling={"rope_type": "llama3", "factor": 8.0}), 8192),
    (dict(max_position_embeddings=32768, rope_scaling={"type": "yarn", "factor": 4.0,
                                                       "original_max_position_embeddings": 32768}), 32768),
    (dict(seq_length=2048, max_position_embeddings=4096), 2048),  # SGLang's order of keys
    (dict(), 2048),  # SGLang's fallback
])
def test_model_context_length_as_sglang_reads_it(config: dict[str, Any], expected: int) -> None:
    assert model_context_length(SimpleNamespace(**config)) == expected


def test_context_length_is_never_invented() -> None:
    """The real server's /server_info has context_length null: the model's own length counts (was 4096)."""
    assert context_length_of(FACTS, 32768, None) == 32768
    assert context_length_of(replace(FACTS, context_length=8192), 32768, None) == 8192  # --context-length
    # The longest prompt the worker takes (KV pool smaller than the context) bounds it.
    assert context_length_of(replace(FACTS, max_input_tokens=10_000 - 6), 32768, None) == 10_000
    assert context_length_of(FACTS, 32768, 2048) == 2048  # Lodestar's own setting only lowers it
    assert context_length_of(FACTS, 1024, 2048) == 1024


def _request(**sampling: Any) -> EngineRequest:
    return EngineRequest(request_id="r", prompt_ids=[1, 2, 3], sampling=SamplingParams(max_new_tokens=8, **sampling))


def test_ignore_eos_is_sent_only_when_asked() -> None:
    body = generate_body(_request(ignore_eos=True), prompt=[1, 2, 3], image_urls=[])
    assert API.decode_GenerateRequest(json.loads(json.dumps(body))).sampling_params.ignore_eos is True
    assert "ignore_eos" not in generate_body(_request(), prompt=[1, 2, 3], image_urls=[])["sampling_params"]


class _Tokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)


def test_prompt_tokens_of_image_prompts_are_lodestars() -> None:
    chunk = json.dumps({"text": "x", "output_ids": [5], "meta_info": {
        "prompt_tokens": 12, "completion_tokens": 1, "finish_reason": {"type": "length"}}}).encode()
    assert ReplyReader(_Tokenizer(), 1).read(chunk).facts == RequestFacts(12)
    assert ReplyReader(_Tokenizer(), 1, prompt_tokens=300).read(chunk).facts == RequestFacts(300)
