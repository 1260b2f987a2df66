"""ToolCallParser: content and calls out of generated text, the same however the text is chunked."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tools import calls as calls_module
from tools.calls import ParsedCall, ToolCallParser

OPEN, CLOSE = "<tool_call>", "</tool_call>"
SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"]},
    "ping": {"type": "object", "properties": {}},
}


def call(name: str, arguments: Any, raw: str | None = None) -> str:
    body = raw if raw is not None else json.dumps({"name": name, "arguments": arguments})
    return f"{OPEN}\n{body}\n{CLOSE}"


PARIS = call("get_weather", {"city": "Paris"})
ROME = call("get_weather", {"city": "Rome", "days": 3})


def parser(bare: bool = False) -> ToolCallParser:
    return ToolCallParser(OPEN, CLOSE, SCHEMAS, bare=bare)


def feed_all(chunks: list[str], bare: bool = False) -> tuple[list[str | ParsedCall], ToolCallParser]:
    p = parser(bare)
    out: list[str | ParsedCall] = []
    for chunk in chunks:
        out += p.feed(chunk)
    out += p.finish()
    return out, p


def summary(chunks: list[str], bare: bool = False) -> tuple[str, list[tuple[str, str]], bool]:
    """What a client sees: the content, the calls (name, arguments) and whether the reply was cut."""
    out, p = feed_all(chunks, bare)
    assert all(isinstance(piece, ParsedCall) or piece for piece in out), out  # no empty content pieces
    calls = [(c.name, c.arguments) for c in out if isinstance(c, ParsedCall)]
    assert calls == [(c.name, c.arguments) for c in p.calls]
    return "".join(c for c in out if isinstance(c, str)), calls, p.repeated


# -- the shapes of a reply ----------------------------------------------------------------------------------

def test_plain_text_is_content() -> None:
    assert summary(["Hello, world."]) == ("Hello, world.", [], False)


def test_one_call() -> None:
    out, p = feed_all([PARIS])
    assert len(out) == 1 and isinstance(out[0], ParsedCall)
    assert (out[0].name, out[0].arguments) == ("get_weather", '{"city": "Paris"}')
    assert out[0].id.startswith("call_") and len(out[0].id) == 29
    assert p.calls == out and not p.repeated


def test_content_before_a_call() -> None:
    out, _ = feed_all(["Let me check the weather.\n" + PARIS])
    assert out[0] == "Let me check the weather."  # whitespace before the call is not content
    assert isinstance(out[1], ParsedCall) and out[1].name == "get_weather"


def test_several_calls_in_order_with_unique_ids() -> None:
    out, p = feed_all([PARIS + "\n" + ROME + "\n" + call("ping", {})])
    assert [(c.name, c.arguments) for c in p.calls] == [
        ("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome", "days": 3}'), ("ping", "{}")]
    assert all(isinstance(piece, ParsedCall) for piece in out)
    assert len({c.id for c in p.calls}) == 3


def test_text_after_a_call_is_content() -> None:
    assert summary([PARIS + "\n\nThat is all."]) == (
        "\n\nThat is all.", [("get_weather", '{"city": "Paris"}')], False)


def test_a_call_without_arguments_gets_an_empty_object() -> None:
    assert summary([call("ping", None, raw='{"name": "ping"}')])[1] == [("ping", "{}")]


@pytest.mark.parametrize("cut", [1, 5, len(OPEN), len(OPEN) + 10, len(PARIS) - len(CLOSE), len(PARIS) - 1])
def test_a_truncated_call_never_reaches_the_content(cut: int) -> None:
    """Markup of a call cut off by max_tokens is debris, not the model's answer (issue 19): the text before it
    stays content, the unfinished call is dropped, and the finish reason ("length") tells the client."""
    for bare in (False, True):
        assert summary(["Sure:" + PARIS[:cut]], bare) == ("Sure:", [], False)
        content, calls, _ = summary([PARIS[:cut]], bare)
        assert (content, calls) == ("", [])
    # After a complete call: the call stays, the unfinished one is gone.
    content, calls, repeated = summary([PARIS + "\n" + ROME[:cut]])
    assert (content, calls, repeated) == ("", [("get_weather", '{"city": "Paris"}')], False)


@pytest.mark.parametrize("body", [
    '{"name": "get_weather", "arguments": {"city": ',  # cut JSON
    "not json at all",
    '["get_weather", {}]',  # not an object
    '{"arguments": {"city": "Paris"}}',  # no name
    '{"name": 3, "arguments": {}}',
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',  # arguments as a string
    '{"name": "get_weather", "arguments": [1]}',
    '{"name": "launch_rockets", "arguments": {}}',  # not one of the tools
])
def test_malformed_calls_stay_text(body: str) -> None:
    text = f"Before:{call('', None, raw=body)} after"
    assert summary([text]) == (text, [], False)
    assert summary([call("", None, raw=body)]) == (call("", None, raw=body), [], False)


def test_arguments_that_break_the_schema_still_make_a_call_and_are_counted() -> None:
    before = calls_module.schema_mismatches
    assert summary([call("get_weather", {"city": 3})])[1] == [("get_weather", '{"city": 3}')]
    assert calls_module.schema_mismatches == before + 1


def test_arguments_are_reserialised_like_json_dumps() -> None:
    raw = '{"name":"get_weather","arguments":{"city":"K\\u00f6ln",  "days":2,"note":"\\ud83d\\ude00 \\"q\\""}}'
    arguments = summary([call("", None, raw=raw)])[1][0][1]
    assert arguments == '{"city": "Köln", "days": 2, "note": "😀 \\"q\\""}'
    assert arguments == json.dumps(json.loads(raw)["arguments"], ensure_ascii=False)


def test_an_identical_repeated_call_ends_the_reply() -> None:
    out, p = feed_all([PARIS + "\n" + PARIS + "\n" + ROME + "\nmore text"])
    assert [c.name for c in out if isinstance(c, ParsedCall)] == ["get_weather"]
    assert p.repeated and len(p.calls) == 1
    # Streaming: the repeat is noticed when it completes, and nothing after it comes out.
    p = parser()
    assert [type(x) for x in p.feed(PARIS + "\n")] == [ParsedCall]
    assert p.feed(PARIS) == [] and p.repeated
    assert p.feed("\n" + ROME) == [] and p.finish() == []


def test_same_name_other_arguments_is_not_a_repeat() -> None:
    assert summary([PARIS + "\n" + call("get_weather", {"city": "Paris", "days": 1})])[1:] == (
        [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Paris", "days": 1}')], False)


# -- bare calls (tool_choice "auto": small models often drop the markers) ---------------------------------

BARE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize("text", [BARE, "  " + BARE + "\n", f"```json\n{BARE}\n```", f"\n```json\n{BARE}\n```\n"])
def test_bare_calls_are_calls_in_bare_mode_only(text: str) -> None:
    assert summary([text], bare=True) == ("", [("get_weather", '{"city": "Paris"}')], False)
    assert summary([text], bare=False) == (text, [], False)


@pytest.mark.parametrize("text", [
    '{"name": "launch_rockets", "arguments": {}}',  # unknown tool
    '{"answer": 42}',
    '{"name": "get_weather", "arguments": {"city": "Paris"}} and some text',
    "```json\n{\"a\": 1}\n```",
    "```python\nprint(1)\n```",
    "{not json",
    "`",
])
def test_json_that_is_not_a_call_stays_content(text: str) -> None:
    assert summary([text], bare=True) == (text, [], False)


@pytest.mark.parametrize("cut", [1, 10, len(BARE) // 2, len(BARE) - 1])
def test_a_truncated_bare_call_is_dropped(cut: int) -> None:
    """In bare mode the grammar makes a reply that opens with "{" a call: cut off by max_tokens, it is an
    unfinished call, not the answer (seen: '{"name": "get_weather", "arguments": {"city": "London", "unit": "')."""
    p = parser(bare=True)
    assert p.feed(BARE[:cut]) == [] and p.finish(truncated=True) == [] and p.calls == []
    # Not cut off, the same text is whatever the model wrote (the grammar could not have produced it).
    assert summary([BARE[:cut]], bare=True) == (BARE[:cut], [], False)
    # Text that is not JSON stays content even when cut off.
    p = parser(bare=True)
    assert p.feed("Hello there") == ["Hello there"] and p.finish(truncated=True) == []


def test_bare_mode_text_streams_once_it_cannot_be_a_call() -> None:
    p = parser(bare=True)
    assert p.feed("`") == []  # could be the start of a ```json fence
    assert p.feed("``py") == ["```py"]
    p = parser(bare=True)
    assert p.feed("{") == [] and p.feed('"a": 1}') == []  # JSON content waits for the end
    assert p.finish() == ['{"a": 1}']
    p = parser(bare=True)
    assert p.feed("Hi {") == ["Hi {"]


def test_bare_mode_still_parses_marked_calls_when_streamed() -> None:
    """A marked call at the very start of a reply in bare mode, fed as the tokens arrive."""
    p = parser(bare=True)
    out: list[str | ParsedCall] = []
    for piece in [OPEN, "\n", '{"', "name", '":', ' "', "get", "_weather", '",', ' "', "arguments", '":', ' {"',
                  "city", '":', ' "', "Paris", '"}}', "\n", CLOSE]:
        out += p.feed(piece)
    out += p.finish()
    assert [(c.name, c.arguments) for c in out if isinstance(c, ParsedCall)] == [("get_weather", '{"city": "Paris"}')]
    assert [c for c in out if isinstance(c, str)] == []


# -- chunking independence ---------------------------------------------------------------------------------

REPLIES = [
    "Hello, world. No calls here.",
    "Let me check.\n" + PARIS,
    "Let me check.  \n\n" + PARIS + "\nDone.",
    PARIS + "\n" + ROME,
    PARIS + "\n" + PARIS + "\n" + ROME,
    "a <tool_c b <tool_callx> c",
    "Hi" + call("", None, raw="{bad}") + " there " + ROME,
    "Unfinished " + ROME[:-3],
    BARE,
    f" ```json\n{BARE}\n```",
    '{"answer": 42}',
    "```",
    "Ünïcödé ✓ " + call("get_weather", {"city": "Zürich ☀"}),
    "  \n " + PARIS,
    "",
    "   ",
]


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
    edges = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@pytest.mark.parametrize("bare", [False, True])
@pytest.mark.parametrize("text", REPLIES)
def test_split_anywhere_gives_the_same_reply(text: str, bare: bool) -> None:
    whole = summary([text], bare)
    for i in range(len(text) + 1):
        assert summary([text[:i], text[i:]], bare) == whole, f"split at {i}: {text[:i]!r} | {text[i:]!r}"
    assert summary(list(text), bare) == whole  # one character at a time
    rng = random.Random(f"{text}|{bare}")
    for _ in range(30):
        chunks = random_chunks(text, rng)
        assert summary(chunks, bare) == whole, chunks


@pytest.mark.parametrize("bare", [False, True])
@pytest.mark.parametrize("text", REPLIES)
def test_token_by_token_gives_the_same_reply(qwen_tokenizer: Any, text: str, bare: bool) -> None:
    """How the engine feeds the parser: one token's text at a time (the markers are single tokens)."""
    ids = qwen_tokenizer.encode(text)
    pieces = [qwen_tokenizer.decode(ids[:i + 1]) for i in range(len(ids))]
    deltas = [b[len(a):] for a, b in zip(["", *pieces], pieces, strict=False)]
    assert "".join(deltas) == text
    assert summary(deltas, bare) == summary([text], bare)


def test_chunked_output_pieces_concatenate_to_the_whole_content() -> None:
    text = "Some text " + PARIS + " between " + ROME + " after"
    out, _ = feed_all(list(text))
    content = [piece for piece in out if isinstance(piece, str)]
    assert "".join(content) == "Some text between after"


def test_an_overflowing_number_does_not_become_infinity() -> None:
    schemas = {"f": {"type": "object", "properties": {"n": {"type": "number"}}}}
    p = ToolCallParser(OPEN, CLOSE, schemas)
    out = [*p.feed(call("", None, raw='{"name": "f", "arguments": {"n": 1e999}}')), *p.finish()]
    for piece in out:  # either a call with JSON arguments, or (refused) content
        if isinstance(piece, ParsedCall):
            assert "Infinity" not in piece.arguments, piece.arguments
