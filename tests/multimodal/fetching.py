"""Small helpers shared by the fetch tests."""

from __future__ import annotations

import pytest

from core.settings import ImageSettings
from multimodal.errors import ImageError
from multimodal.fetch import fetch_image

from .conftest import run

# The local origin is on 127.0.0.1, which only an explicit private_hosts entry makes fetchable.
LOCAL = ImageSettings(private_hosts=("127.0.0.1",), connect_timeout_s=2.0, fetch_timeout_s=5.0)


def fetch(url: str, policy: ImageSettings = LOCAL, **kwargs) -> bytes:
    return run(fetch_image(url, policy, **kwargs))


def fails(code: str, url: str, policy: ImageSettings = LOCAL, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        fetch(url, policy, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


class FakeResolver:
    """Answers from a script (the last answer repeats) and records every question."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer
