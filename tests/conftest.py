"""Shared fixtures: real servers started as subprocesses on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.postgres import Postgres

ROOT = Path(__file__).resolve().parent.parent
SMALL_MODEL = "smollm2"
DEFAULT_MODEL = "default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(tmp_dir: Path, *args: str, env: dict[str, str] | None = None,
                 wait_ready: bool = True, timeout: float = 600) -> ServerProcess:
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    if "--sessions-path" not in args:  # a fresh sessions and usage database: runs must not see each other's
        args = (*args, "--sessions-path", str(tmp_dir / f"sessions-{port}.sqlite3"))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LODESTAR_")}
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port), *args],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = ServerProcess(proc, port, log_path)
    deadline = time.monotonic() + timeout
    url = f"{server.base_url}/ready" if wait_ready else f"{server.base_url}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log()[-3000:]}")


@pytest.fixture(scope="session")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # fp32: with the prefix cache on, repeated requests give exactly the same tokens (docs/sessions.md)
    server = start_server(tmp_path_factory.mktemp("small"), "--model", SMALL_MODEL, "--max-queue", "16",
                          "--quantize", "none")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Prompted thinking only changes requests that ask for reasoning (tests/e2e/test_reasoning.py).
    server = start_server(tmp_path_factory.mktemp("default"), "--model", DEFAULT_MODEL, "--prompted-thinking")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_vl_model() -> Path:
    """The tiny random-weight Qwen2.5-VL, built offline on first use (needs the default model's tokenizer)."""
    from fixtures.models.tiny_qwen2_5_vl import DEFAULT_OUT, build, default_tokenizer_folder

    return build(DEFAULT_OUT, default_tokenizer_folder())


@pytest.fixture(scope="session")
def tiny_qwen3_model() -> Path:
    """The tiny random-weight Qwen3 (Qwen3's tokenizer and template), built offline on first use."""
    from fixtures.models.tiny_qwen3 import DEFAULT_OUT, build

    return build(DEFAULT_OUT)


@pytest.fixture()
def client(small_server: ServerProcess):
    from openai import OpenAI

    return OpenAI(base_url=f"{small_server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server for the session (tests/postgres.py)."""
    from tests.postgres import start_postgres

    # Not under pytest's tmp_path: its parents are private to the test user, and the server runs as another.
    folder = Path(tempfile.mkdtemp(prefix="lodestar-pg-"))
    try:
        server = start_postgres(folder)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
