"""The chunks of a streamed chat completion, as the benchmarks read them over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx


def stream_chunks(client: httpx.Client, base: str, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """POST a streamed chat completion; yield each `data:` chunk, decoded, as it arrives."""
    with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers or {}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])
