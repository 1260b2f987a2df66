"""Text helpers the streaming stages share."""

from __future__ import annotations


def partial_suffix(text: str, *markers: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of one of `markers`: what a stream
    holds back until the next piece says whether a marker (a stop string, a tag) starts there."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest
