"""Every regular expression that sees client text runs in linear time: worst-case inputs, a time bound."""

from __future__ import annotations

import time

import pytest

from chat import validation
from core import errors
from multimodal import fetch
from sessions import manager
from tools import schema

BIG = 200_000


def hostile(alphabet: str) -> list[str]:
    """Long runs that almost match, then fail at the very end: where backtracking would explode."""
    return [alphabet * (BIG // len(alphabet)) + "!", alphabet * (BIG // len(alphabet)) + "\n!",
            ("." + alphabet) * (BIG // (len(alphabet) + 1)) + "..!"]


@pytest.mark.parametrize(("name", "run", "alphabet"), [
    ("error path", lambda s: errors._split_path(s), " - at `$."),
    ("missing field", lambda s: errors._MISSING.match(s), "Object missing required field `a"),
    ("bad tag", lambda s: errors._BAD_TAG.match(s), "Invalid value 'a'"),
    ("message name", lambda s: validation._NAME.fullmatch(s), "a_"),
    ("logit_bias space", lambda s: validation._WS.match(s.encode()), " \t\r"),
    ("logit_bias key", lambda s: validation._KEY.match(s.encode()), '"a\\"'),
    ("logit_bias number", lambda s: validation._NUMBER.match(s.encode()), "1.5e+0"),
    ("tool name", lambda s: schema.NAME.fullmatch(s), "a-"),
    ("session id", lambda s: manager._ID.fullmatch(s), "a.:"),
    ("host name", lambda s: fetch._HOST_NAME.match(s), "a."),
])
def test_regex_worst_cases_are_fast(name: str, run, alphabet: str) -> None:
    for text in hostile(alphabet):
        started = time.perf_counter()
        run(text)
        assert time.perf_counter() - started < 0.5, name
