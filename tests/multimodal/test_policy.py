"""ImageSettings defaults and host pattern matching."""

from __future__ import annotations

import pytest

from core.settings import ImageSettings
from multimodal.policy import host_matches


def test_defaults():
    policy = ImageSettings()
    assert policy.allow_http and policy.media_dir is None
    assert policy.max_bytes == 20 * 1024 * 1024 and policy.max_redirects == 3
    assert (policy.connect_timeout_s, policy.fetch_timeout_s) == (5.0, 20.0)
    assert policy.max_source_pixels == 40_000_000 and policy.cache_entries == 64
    with pytest.raises(AttributeError):  # frozen
        policy.allow_http = False  # type: ignore[misc]


@pytest.mark.parametrize(("host", "patterns", "expected"), [
    ("example.com", ("example.com",), True),
    ("EXAMPLE.com.", ("example.COM",), True),
    ("example.com", ("example.com.",), True),
    ("img.example.com", ("example.com",), False),
    ("img.example.com", ("*.example.com",), True),
    ("a.b.example.com", ("*.example.com",), True),
    ("example.com", ("*.example.com",), False),
    ("badexample.com", ("*.example.com",), False),
    ("xn--bcher-kva.de", ("bücher.de",), True),
    ("img.xn--bcher-kva.de", ("*.bücher.de",), True),
    ("::1", ("[::1]",), True),
    ("127.0.0.1", ("127.0.0.1",), True),
    ("2130706433", ("127.0.0.1",), False),  # as written; callers decide about canonical forms
    ("example.com", (), False),
    ("", ("*.",), False),
])
def test_host_matches(host, patterns, expected):
    assert host_matches(host, patterns) is expected
