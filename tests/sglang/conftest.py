"""Lodestar with --engine sglang in front of stand-in SGLang workers (tests/sglang/standin.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ServerProcess, free_port, start_server
from tests.sglang.standin import StandIn, build_engine


@dataclass
class Deployment:
    server: ServerProcess
    workers: list[StandIn]
    urls: list[str]  # the workers' URLs, in the order Lodestar was given them

    def client(self, timeout: float = 60) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.base_url}/v1", api_key="x", max_retries=0, timeout=timeout)


def serve_workers(*standins: StandIn) -> tuple[list[str], list[Any]]:
    urls, servers = [], []
    for standin in standins:
        port = free_port()
        servers.append(standin.serve_in_thread(port))
        urls.append(f"http://127.0.0.1:{port}")
    return urls, servers


def deploy(tmp: Path, model: str, *standins: StandIn, extra: tuple[str, ...] = (),
           dead_urls: tuple[str, ...] = ()) -> tuple[Deployment, list[Any]]:
    urls, servers = serve_workers(*standins)
    urls = [*dead_urls, *urls]
    flags = [arg for url in urls for arg in ("--sglang-url", url)]
    server = start_server(tmp, "--engine", "sglang", *flags, "--model", model, "--sglang-read-timeout-s", "4",
                          "--sglang-retry-s", "3", "--sglang-health-interval-s", "1", *extra, timeout=120)
    return Deployment(server, list(standins), urls), servers


def stop(deployment: Deployment, servers: list[Any]) -> None:
    deployment.server.stop()
    for server in servers:
        server.should_exit = True


@pytest.fixture(scope="session")
def smollm2_engine() -> Any:
    return build_engine("smollm2")


@pytest.fixture(scope="session")
def qwen3_engine(tiny_qwen3_model: Path) -> Any:
    return build_engine(str(tiny_qwen3_model))


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, smollm2_engine: Any) -> Iterator[Deployment]:
    """Two workers on one model: the first streams cumulative output (SGLang's default), the second
    incremental output (--incremental-streaming-output); both honour seeds (--enable-deterministic-inference)."""
    deployment, servers = deploy(tmp_path_factory.mktemp("sglang"), "smollm2",
                                 StandIn(smollm2_engine, name="a", deterministic=True),
                                 StandIn(smollm2_engine, name="b", incremental=True, deterministic=True))
    yield deployment
    stop(deployment, servers)
