"""core/text.py: what a stream holds back while a marker may still be starting."""

from __future__ import annotations

import pytest

from core.text import partial_suffix


@pytest.mark.parametrize(("text", "markers", "expected"), [
    ("Hello <tool_c", ("<tool_call>",), 7),
    ("Hello <tool_call>", ("<tool_call>",), 0),  # a whole marker is not a partial one
    ("Hello", ("<tool_call>",), 0),
    ("ab", ("abc", "bcd"), 2),  # the longest over all markers
    ("xb", ("abc", "bcd"), 1),
    ("", ("abc",), 0),
    ("abc", (), 0),
    ("a", ("a",), 0),  # a one-character marker has no proper beginning
])
def test_partial_suffix(text: str, markers: tuple[str, ...], expected: int) -> None:
    assert partial_suffix(text, *markers) == expected
