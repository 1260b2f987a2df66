"""logit_bias end to end: the official openai client, a real server running SmolLM2-135M (fp32), the model's
own tokenizer to name token ids. A +100 bias forces a token, -100 bans one, a grammar still wins, and the
bounds are 400s naming the param. Few tokens each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

SEA = [{"role": "user", "content": "Write one short sentence about the sea."}]
VOCAB = 49152  # SmolLM2's vocabulary (its config's vocab_size)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from engines.embedded.loader import resolve_model_folder

    folder, _, _ = resolve_model_folder("smollm2", Path("~/.local/share/lodestar").expanduser())
    return AutoTokenizer.from_pretrained(folder)


def single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == 1, (text, ids)
    return ids[0]


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    kw.setdefault("messages", SEA)
    return client.chat.completions.create(model="smollm2", **kw)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_plus_100_forces_a_token(client, tokenizer, temperature: float):
    banana = single_token(tokenizer, " banana")
    reply = ask(client, max_tokens=3, temperature=temperature, seed=5, logprobs=True,
                logit_bias={str(banana): 100})
    choice = reply.choices[0]
    assert [t.token for t in choice.logprobs.content] == [" banana"] * 3
    assert choice.message.content == " banana" * 3
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 3
    # Logprobs are the model's own (unbiased) view: it does not expect " banana" here.
    assert choice.logprobs.content[0].logprob < -1.0


def test_minus_100_bans_the_greedy_token(client, tokenizer):
    plain = ask(client, max_tokens=2, temperature=0, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    first, runner_up = plain[0].top_logprobs[0].token, plain[0].top_logprobs[1].token
    assert plain[0].token == first
    banned = ask(client, max_tokens=2, temperature=0, logprobs=True, top_logprobs=2,
                 logit_bias={str(single_token(tokenizer, first)): -100}).choices[0]
    # Greedy now takes the model's second choice; the reported alternatives still rank the banned token first.
    assert banned.logprobs.content[0].token == runner_up
    assert banned.logprobs.content[0].top_logprobs[0].token == first
    assert first not in [t.token for t in banned.logprobs.content]


def test_a_grammar_still_wins_over_a_bias(client, tokenizer):
    """json_object: a token the grammar forbids stays forbidden, +100 or not; the answer is still JSON."""
    hello = single_token(tokenizer, "Hello")
    reply = ask(client, messages=[{"role": "user", "content": "Reply with a JSON object about the sea."}],
                response_format={"type": "json_object"}, max_tokens=4, temperature=0,
                logit_bias={str(hello): 100})
    content = reply.choices[0].message.content
    assert content.lstrip().startswith("{"), content  # "Hello" cannot open a JSON object
    if reply.choices[0].finish_reason == "stop":
        json.loads(content)


def test_the_last_id_of_the_vocabulary_is_accepted(client):
    reply = ask(client, max_tokens=1, temperature=0, logit_bias={str(VOCAB - 1): -100, "0": 0.5})
    assert reply.usage.completion_tokens == 1


@pytest.mark.parametrize(("bias", "words"), [
    ({str(VOCAB): 1}, f"is not a token id of this model (ids are 0 to {VOCAB - 1})"),
    ({"-1": 1}, "is not a token id"),
    ({"17": 100.5}, "[-100, 100]"),
    ({"seventeen": 1}, "decimal integers"),
    ({str(i): 1 for i in range(301)}, "more than 300 entries"),
])
def test_bounds_are_400s_naming_logit_bias(client, bias: dict[str, float], words: str):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, max_tokens=1, logit_bias=bias)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == "logit_bias" and words in error["message"]
