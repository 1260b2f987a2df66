"""Property: whatever a model samples under a tool's grammar is a call whose arguments match the caller's schema.

The "model" is random logits: each step a seeded random vector goes through GrammarState.restrict (exactly
what the scheduler does), the argmax is taken and fed back with advance(), until the end-of-turn token.
Random schemas come from a subset the grammar supports, bounded (short strings, few items) so that random
decoding finishes. The output is parsed by ToolCallParser and validated with jsonschema against the schema
as the caller wrote it (the grammar enforces the closed version, which is stricter).

Hypothesis drives the schemas when it is installed; a fixed set of seeds runs either way.
"""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.embedded.grammar import GrammarCompiler
from tools.calls import ParsedCall, ToolCallParser
from tools.checker import GrammarChecker
from tools.grammar import CallMarkers, constraint, tool_calls_grammar
from tools.schema import check_schema

MAX_STEPS = 300
CHECKER = GrammarChecker()  # schema checks run in its child processes, as in the server
NAME_POOL = ["city", "count", "ratio", "flag", "tags", "mode", "inner", "when", "x", "value_2"]


def scalar_schema(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["string", "enum", "integer", "number", "boolean", "null", "anyOf"])
    if kind == "string":
        schema: dict[str, Any] = {"type": "string", "maxLength": rng.randint(0, 6)}
        if rng.random() < 0.3:
            schema["minLength"] = rng.randint(0, schema["maxLength"])
        return schema
    if kind == "enum":
        values = rng.sample(["a", "b c", "ünï", "", "x\"y", "1"], k=rng.randint(1, 4))
        return {"type": "string", "enum": values} if rng.random() < 0.7 else {"enum": [*values, 3, None]}
    if kind == "integer":
        schema = {"type": "integer"}
        low = rng.randint(-1000, 1000)
        if rng.random() < 0.7:
            schema["minimum"] = low
        if rng.random() < 0.7:
            schema["maximum"] = low + rng.randint(0, 5000)
        return schema
    if kind == "number":
        schema = {"type": "number"}
        if rng.random() < 0.5:
            schema["minimum"] = rng.choice([-10, 0, 0.5])
            schema["maximum"] = schema["minimum"] + rng.choice([1, 100, 2.25])
        return schema
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    first, second = rng.sample(["string", "integer", "boolean", "null"], k=2)
    return {"anyOf": [{"type": t, "maxLength": 4} if t == "string" else {"type": t} for t in (first, second)]}


def value_schema(rng: random.Random, depth: int) -> dict[str, Any]:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return object_schema(rng, depth + 1)
    if depth < 3 and roll < 0.4:
        most = rng.randint(0, 3 if depth else 4)
        return {"type": "array", "items": value_schema(rng, depth + 1), "maxItems": most,
                **({"minItems": 1} if most and rng.random() < 0.3 else {})}
    return scalar_schema(rng)


def object_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    names = rng.sample(NAME_POOL, k=rng.randint(0 if depth else 1, 4 if depth == 0 else 3))
    properties = {name: value_schema(rng, depth) for name in names}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = [name for name in names if rng.random() < 0.5]
    if required:
        schema["required"] = required
    return schema


def decode_randomly(compiler: GrammarCompiler, tokenizer: Any, grammar: str, seed: int,
                    vocab_size: int) -> tuple[list[int], bool]:
    """Sample under the grammar from random logits; return the tokens and whether the turn ended."""
    state = compiler.state(constraint(grammar))
    generator = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    for _ in range(MAX_STEPS):
        logits = torch.randn(vocab_size, generator=generator)
        state.restrict(logits)
        assert torch.isfinite(logits).any(), "the grammar allows no token at all"
        token = int(logits.argmax())
        assert torch.isfinite(logits[token])
        if token == tokenizer.eos_token_id:
            assert state.matcher.consume_token(token) and state.matcher.is_stopped()
            return tokens, True
        tokens.append(token)
        state.advance(token)
        assert not state.matcher.is_error(), state.matcher.get_error()
    return tokens, False


def check_one(compiler: GrammarCompiler, tokenizer: Any, markers: CallMarkers, vocab_size: int,
              schema: dict[str, Any], seed: int) -> bool:
    """One example; True when the reply finished (and was then checked in full)."""
    check_schema(schema, "tools[0].function.parameters", object_root=True, checker=CHECKER,
                 deadline=CHECKER.deadline())  # the subset is really supported
    grammar = tool_calls_grammar([("f", schema)], markers, parallel=False)
    tokens, finished = decode_randomly(compiler, tokenizer, grammar, seed, vocab_size)
    text = tokenizer.decode(tokens)
    context = f"schema={json.dumps(schema)} seed={seed} output={text!r}"
    assert text.startswith('<tool_call>\n{"name": "f", "arguments": {'), context
    if not finished:  # the cap: what there is must be a valid beginning, which the matcher already checked
        return False
    parser = ToolCallParser(markers.open, markers.close, {"f": schema})
    pieces = [*parser.feed(text), *parser.finish()]
    assert len(pieces) == 1 and isinstance(pieces[0], ParsedCall), context
    arguments = json.loads(pieces[0].arguments)
    jsonschema.Draft202012Validator(schema).validate(arguments)
    # The grammar closes objects: no property the schema does not list.
    assert_no_extras(schema, arguments, context)
    return True


def assert_no_extras(schema: dict[str, Any], value: Any, context: str) -> None:
    if isinstance(value, dict) and "properties" in schema:
        assert set(value) <= set(schema["properties"]), context
        for key, item in value.items():
            assert_no_extras(schema["properties"][key], item, context)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            assert_no_extras(schema["items"], item, context)


SEEDS = range(60)


def test_random_decoding_gives_valid_calls(compiler: GrammarCompiler, qwen_tokenizer: Any, markers: CallMarkers,
                                          vocab_size: int) -> None:
    finished = 0
    for seed in SEEDS:
        schema = object_schema(random.Random(seed))
        finished += check_one(compiler, qwen_tokenizer, markers, vocab_size, schema, seed)
    assert finished >= len(SEEDS) - 2, f"only {finished} of {len(SEEDS)} replies finished in {MAX_STEPS} tokens"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(rng=st.randoms(use_true_random=False), seed=st.integers(0, 2**31 - 1))
def test_random_decoding_gives_valid_calls_hypothesis(compiler: GrammarCompiler, qwen_tokenizer: Any,
                                                      markers: CallMarkers, vocab_size: int,
                                                      rng: random.Random, seed: int) -> None:
    check_one(compiler, qwen_tokenizer, markers, vocab_size, object_schema(rng), seed)
