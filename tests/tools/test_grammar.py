"""The grammars, run on the real Qwen2.5 tokenizer through the engine's GrammarCompiler (no model weights)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from engines.base import Constraint
from engines.embedded.grammar import GrammarCompiler, GrammarFailed, GrammarState
from tools.grammar import (
    CallMarkers,
    answer_grammar,
    auto_grammar,
    constraint,
    json_or_calls_grammar,
    tool_calls_grammar,
)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}
UNITS = {"type": "object", "properties": {"unit": {"$ref": "#/$defs/unit"}, "more": {"$ref": "#"}},
         "$defs": {"unit": {"enum": ["c", "f"]}}}
TOOLS = [("get_weather", WEATHER), ("set_unit", UNITS)]
ANSWER = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def call(name: str, arguments: str) -> str:
    """A call exactly as the Qwen2.5 chat template shows it to the model."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


PARIS = call("get_weather", '{"city": "Paris"}')
UNIT_F = call("set_unit", '{"unit": "f"}')


class Run:
    """One choice's grammar state, fed text as tokens of the real tokenizer."""

    def __init__(self, compiler: GrammarCompiler, tokenizer: Any, vocab_size: int, grammar: str) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.state = compiler.state(constraint(grammar))

    def feed(self, text: str) -> bool:
        """Consume the text's tokens; False at the first token the grammar refuses."""
        return all(self.state.matcher.consume_token(t) for t in self.tokenizer.encode(text))

    def allowed(self) -> list[int]:
        """The tokens `restrict` leaves finite, as the sampler sees them."""
        logits = torch.zeros(self.vocab_size)
        self.state.restrict(logits)
        return torch.isfinite(logits).nonzero().flatten().tolist()


@pytest.fixture()
def run(compiler: GrammarCompiler, qwen_tokenizer: Any, vocab_size: int) -> Any:
    return lambda grammar: Run(compiler, qwen_tokenizer, vocab_size, grammar)


@pytest.fixture()
def accepts(run: Any, qwen_tokenizer: Any) -> Any:
    """Whether the grammar takes the whole text and then the end of the turn."""
    def check(grammar: str, text: str) -> bool:
        r = run(grammar)
        return r.feed(text) and r.state.matcher.consume_token(qwen_tokenizer.eos_token_id) \
            and r.state.matcher.is_stopped()
    return check


# -- tool_choice "required" / named --------------------------------------------------------------------------

def test_required_calls_accept_the_template_format(accepts: Any, markers: CallMarkers) -> None:
    grammar = tool_calls_grammar(TOOLS, markers, parallel=True)
    assert accepts(grammar, PARIS)
    assert accepts(grammar, call("get_weather", '{"city": "Paris", "days": 3}'))
    assert accepts(grammar, UNIT_F)
    assert accepts(grammar, call("set_unit", '{"more": {"unit": "c"}}'))  # the recursive $ref
    assert accepts(grammar, PARIS + "\n" + UNIT_F + "\n" + PARIS)
    assert accepts(grammar, call("get_weather", '{"city": "Köln \\"Dom\\""}'))


@pytest.mark.parametrize("text", [
    call("get_time", "{}"),  # not a tool
    call("get_weathe", '{"city": "Paris"}'),
    call("get_weather", '{"city": 3}'),  # wrong type
    call("get_weather", '{"city": "Paris", "days": 1.5}'),
    call("get_weather", '{"days": 3}'),  # required property missing
    call("get_weather", '{"city": "Paris", "country": "FR"}'),  # extra property (closed objects)
    call("set_unit", '{"unit": "kelvin"}'),  # not in the enum behind the $ref
    call("get_weather", '{"city":"Paris"}'),  # not json.dumps spacing
    call("get_weather", '{"city": "Paris"}').replace("\n", " "),
    "Sure! " + PARIS,  # no text in "required"
    "",  # nothing at all
    PARIS + "\nDone.",  # nor after the calls
    PARIS + PARIS,  # calls are separated by one newline
])
def test_required_calls_reject(accepts: Any, markers: CallMarkers, text: str) -> None:
    assert not accepts(tool_calls_grammar(TOOLS, markers, parallel=True), text)


def test_the_mask_offers_only_what_the_grammar_allows(run: Any, markers: CallMarkers, qwen_tokenizer: Any) -> None:
    r = run(tool_calls_grammar(TOOLS, markers, parallel=False))
    assert r.allowed() == [markers.open_token]  # the reply must open a call, with the single token
    assert r.feed('<tool_call>\n{"name": "')
    offered = [qwen_tokenizer.decode([t]) for t in r.allowed()]
    assert offered and all("get_weather".startswith(s) or "set_unit".startswith(s) for s in offered), offered
    assert r.feed('get_weather", "arguments": {"city": "Paris"}}\n')
    assert r.allowed() == [markers.close_token]
    assert r.feed("</tool_call>")
    assert r.allowed() == [qwen_tokenizer.eos_token_id]  # one call only: the turn must end


def test_restrict_sets_the_rest_to_minus_infinity(run: Any, markers: CallMarkers, vocab_size: int) -> None:
    r = run(tool_calls_grammar(TOOLS, markers, parallel=True))
    logits = torch.randn(vocab_size)
    before = logits.clone()
    r.state.restrict(logits)
    assert logits[markers.open_token] == before[markers.open_token]
    assert torch.isneginf(logits).sum() == vocab_size - 1


def test_parallel_false_forbids_a_second_call(accepts: Any, run: Any, markers: CallMarkers,
                                              qwen_tokenizer: Any) -> None:
    single = tool_calls_grammar(TOOLS, markers, parallel=False)
    assert accepts(single, PARIS)
    assert not accepts(single, PARIS + "\n" + UNIT_F)
    r = run(tool_calls_grammar(TOOLS, markers, parallel=True))
    assert r.feed(PARIS)
    newline = qwen_tokenizer.encode("\n")[0]
    assert set(r.allowed()) >= {qwen_tokenizer.eos_token_id, newline}


def test_a_named_choice_offers_that_tool_only(accepts: Any, markers: CallMarkers) -> None:
    grammar = tool_calls_grammar([("set_unit", UNITS)], markers, parallel=True)
    assert accepts(grammar, UNIT_F)
    assert not accepts(grammar, PARIS)


def test_markers_that_are_not_single_tokens_are_matched_as_text(accepts: Any) -> None:
    markers = CallMarkers("[CALL]", "[/CALL]", None, None)
    grammar = tool_calls_grammar(TOOLS, markers, parallel=False)
    assert accepts(grammar, '[CALL]\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n[/CALL]')
    assert not accepts(grammar, PARIS)


# -- tool_choice "auto" ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "The weather is fine.",
    "x",
    "Use {braces} after three characters",
    "Let me check.\n" + PARIS,
    "Checking both.\n" + PARIS + "\n" + UNIT_F,
    PARIS,
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',  # bare JSON call
    '{"name": "set_unit", "arguments": {"unit": "c"}}',  # bare, with a $ref into the tool's own $defs
    '{"name": "set_unit", "arguments": {"more": {"unit": "f"}}}',  # bare, recursive $ref
    '```json\n{"name": "anything", "arguments": 1}\n```',  # fenced: text to the grammar
    "Use <b>bold</b> and a newline\nand more",
])
def test_auto_accepts(accepts: Any, markers: CallMarkers, text: str) -> None:
    assert accepts(auto_grammar(TOOLS, markers, parallel=True), text)


@pytest.mark.parametrize("text", [
    '{"answer": 42}',  # text may not begin with "{" unless it is a call
    ' {"answer": 42}',  # nor after a stray character or two: small models retype calls so
    '>{"name": "get_weather", "arguments": {"city": 3}}',
    'ab{',
    "{",
    '{"name": "get_time", "arguments": {}}',
    '{"name": "get_weather", "arguments": {"city": 3}}',
    '{"name": "set_unit", "arguments": {"unit": "kelvin"}}',
    '{"name": "get_weather", "arguments": {"city": "Paris"}} and text',
    "Sure. " + call("get_time", "{}"),  # a marked call after text is constrained too
    "Sure. " + call("get_weather", '{"city": 3}'),
    PARIS + "\nDone.",
    "",
])
def test_auto_rejects(accepts: Any, markers: CallMarkers, text: str) -> None:
    assert not accepts(auto_grammar(TOOLS, markers, parallel=True), text)


def test_auto_with_parallel_false(accepts: Any, markers: CallMarkers) -> None:
    grammar = auto_grammar(TOOLS, markers, parallel=False)
    assert accepts(grammar, "Ok.\n" + PARIS)
    assert not accepts(grammar, "Ok.\n" + PARIS + "\n" + UNIT_F)


def test_auto_text_cannot_hide_the_markers(run: Any, markers: CallMarkers) -> None:
    """Inside free text the single-token markers are not allowed: writing one starts a constrained call."""
    r = run(auto_grammar(TOOLS, markers, parallel=True))
    assert r.feed("Some text ")
    allowed = set(r.allowed())
    assert markers.open_token in allowed and markers.close_token not in allowed
    assert r.feed("<tool_call>")
    assert markers.open_token not in r.allowed()


# -- response_format --------------------------------------------------------------------------------------

def test_json_schema_output(accepts: Any) -> None:
    grammar = json_or_calls_grammar(ANSWER, None, None, parallel=True)
    assert accepts(grammar, '{"answer": 42}')
    for text in ['{"answer": "42"}', '{"answer": 42, "why": "because"}', '{}', "42", "Sure: {\"answer\": 42}",
                 '{"answer":42}', PARIS]:
        assert not accepts(grammar, text), text


def test_json_object_output(accepts: Any) -> None:
    grammar = json_or_calls_grammar({"type": "object"}, None, None, parallel=True)
    assert accepts(grammar, '{"a": [1, 2.5, {"b": null}], "c": "d"}')
    assert accepts(grammar, "{}")
    for text in ["[1]", '"text"', "hello", '{"a": 1} trailing']:
        assert not accepts(grammar, text), text


def test_json_or_calls(accepts: Any, markers: CallMarkers) -> None:
    grammar = json_or_calls_grammar(ANSWER, TOOLS, markers, parallel=False)
    assert accepts(grammar, '{"answer": 42}')
    assert accepts(grammar, PARIS)
    for text in ["plain text", PARIS + "\n" + UNIT_F, '{"answer": 42}\n' + PARIS, call("get_time", "{}")]:
        assert not accepts(grammar, text), text
    assert accepts(json_or_calls_grammar(ANSWER, TOOLS, markers, parallel=True), PARIS + "\n" + UNIT_F)


@pytest.mark.parametrize(("schema", "text", "ok"), [
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a": 1, "z": 2}', False),
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a": 1}', True),
    ({"type": "object", "properties": {"n": {"type": "object", "properties": {"b": {}}}}}, '{"n": {"z": 1}}', False),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": True}, '{"a": 1, "z": 2}', True),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}, '{"z": 2}', True),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}}, '{"z": "2"}', False),
    ({"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}}, '{"xy": 1}', True),
    # patternProperties: the object is left open (JSON Schema's default), as the caller wrote it.
    ({"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}}, '{"y": 1}', True),
    ({"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {"type": "integer"}}}, '{"xy": "1"}',
     False),
    ({"type": "object"}, '{"anything": [1]}', True),
    ({"type": "object", "allOf": [{"properties": {"a": {}}}]}, '{"a": 1, "z": 2}', True),
])
def test_closed_objects_in_the_grammar(accepts: Any, schema: dict[str, Any], text: str, ok: bool) -> None:
    assert accepts(json_or_calls_grammar(schema, None, None, parallel=False), text) is ok


# -- the compiler ----------------------------------------------------------------------------------------

def test_compiled_grammars_are_cached_by_key(compiler: GrammarCompiler, qwen_tokenizer: Any) -> None:
    grammar = json_or_calls_grammar({"type": "object", "properties": {"cache_test": {"type": "boolean"}}}, None, None,
                                    parallel=False)
    start = compiler.stats()
    first = compiler.state(constraint(grammar))
    after_first = compiler.stats()
    assert after_first["grammars_compiled"] == start["grammars_compiled"] + 1
    second = compiler.state(constraint(grammar))
    after_second = compiler.stats()
    assert after_second == {"grammars_compiled": after_first["grammars_compiled"],
                            "grammars_reused": after_first["grammars_reused"] + 1,
                            "grammar_compile_ms": after_first["grammar_compile_ms"]}  # a hit costs no compile
    # Each state is its own copy: advancing one leaves the other at the start.
    for token in qwen_tokenizer.encode('{"cache_test": true}'):
        assert first.matcher.consume_token(token)
    assert first.matcher.consume_token(qwen_tokenizer.eos_token_id)
    assert second.matcher.consume_token(qwen_tokenizer.encode("{")[0])
    assert not second.matcher.is_stopped()
    compiler.compile(constraint(grammar))
    assert compiler.stats()["grammars_reused"] == after_second["grammars_reused"] + 1


def test_the_cache_is_bounded(compiler: GrammarCompiler) -> None:
    limit = compiler._cache_entries
    compiler._cache_entries = 2
    try:
        keys = [constraint(f'start: "bounded {i}"') for i in range(3)]
        for c in keys:
            compiler.compile(c)
        compiled = compiler.stats()["grammars_compiled"]
        compiler.compile(keys[2])
        compiler.compile(keys[0])  # evicted: compiled again
        assert compiler.stats()["grammars_compiled"] == compiled + 1
        assert len(compiler._cache) == 2
    finally:
        compiler._cache_entries = limit


def test_a_broken_grammar_is_a_value_error(compiler: GrammarCompiler) -> None:
    with pytest.raises(ValueError, match="the grammar cannot be used"):
        compiler.state(Constraint(grammar="start: undefined_rule", key="broken"))


def test_an_errored_matcher_ends_the_choice_with_an_error(compiler: GrammarCompiler, qwen_tokenizer: Any,
                                                          vocab_size: int, markers: CallMarkers) -> None:
    """A token the grammar refuses, or a matcher in error, is a GrammarFailed (a 400 for the request), never
    a quiet end-of-turn that would mark a cut-off reply as "stop" (issue 18)."""
    state: GrammarState = compiler.state(constraint(tool_calls_grammar(TOOLS, markers, parallel=True)))
    with pytest.raises(GrammarFailed) as info:
        state.advance(qwen_tokenizer.encode("hello")[0])
    assert (info.value.status, info.value.code) == (400, "schema_too_complex")
    assert state.matcher.is_error()
    with pytest.raises(GrammarFailed):
        state.restrict(torch.zeros(vocab_size))


def test_grammar_keys_are_content_hashes(markers: CallMarkers) -> None:
    a = constraint(tool_calls_grammar(TOOLS, markers, parallel=True))
    b = constraint(tool_calls_grammar(json.loads(json.dumps(TOOLS)), markers, parallel=True))
    c = constraint(tool_calls_grammar(TOOLS, markers, parallel=False))
    assert a == b and a.key != c.key


# -- "auto" in reply to tool results: calls need the markers ------------------------------------------------

@pytest.mark.parametrize("text", [
    "It is 21 degrees in Paris.",
    "Here it is: {braces} come later",
    "**21 °C** in Paris",
    "- 21 °C\n- sunny",
    "Été: 21",
    "$21 a night",
    "☀️ sunny, 21 °C",
    "Let me also check the unit.\n" + UNIT_F,
    PARIS,
])
def test_answer_accepts(accepts: Any, markers: CallMarkers, text: str) -> None:
    assert accepts(auto_grammar(TOOLS, markers, parallel=True, bare=False), text)


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',  # a bare call is no longer read as one
    '>{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '```\n[1, 2]\n```',
    '```python\nprint(21)\n```',  # a reply to tool results opens like prose
    '({"name": "get_weather", "arguments": {"city": "Paris"}})',
    " It is 21 degrees.",
    "",
])
def test_answer_rejects(accepts: Any, markers: CallMarkers, text: str) -> None:
    assert not accepts(auto_grammar(TOOLS, markers, parallel=True, bare=False), text)


@pytest.mark.parametrize("text", ["It is 21 degrees in Paris.", "☀️ sunny", "- 21 °C"])
def test_none_answer_accepts_prose(accepts: Any, text: str) -> None:
    assert accepts(answer_grammar(), text)


@pytest.mark.parametrize("text", ['{"name": "get_weather", "arguments": {"city": "Paris"}}', "```json\n{}\n```",
                                  "(1)", "", "<tool_call>"])
def test_none_answer_rejects_retyped_calls(accepts: Any, text: str) -> None:
    assert not accepts(answer_grammar(), text)


@pytest.mark.parametrize("vocab,row", [(49152, 49152), (151665, 151936), (100, 97)])
def test_the_mask_forbids_exactly_what_llguidance_s_reference_kernel_forbids(vocab: int, row: int) -> None:
    import llguidance.numpy
    import numpy as np

    from engines.embedded.grammar import forbidden_tokens

    bitmask = np.random.default_rng(vocab).integers(-2**31, 2**31 - 1, size=(1, (vocab + 31) // 32), dtype=np.int32)
    reference = np.zeros((1, row), dtype=np.float32)
    llguidance.numpy.apply_token_bitmask_inplace(reference, bitmask)
    logits = torch.zeros(row)
    logits.masked_fill_(forbidden_tokens(bitmask[0], row), float("-inf"))
    assert np.array_equal(np.isinf(reference[0]), torch.isinf(logits).numpy())
    assert 0 < int(torch.isinf(logits).sum()) < row
