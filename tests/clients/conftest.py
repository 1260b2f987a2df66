"""Client libraries against the real server with the default model: what each one sends and expects.

Nothing here may reach past loopback: litellm would fetch its model price map at import, LangSmith and the
Agents SDK would upload traces. The switches below turn those off before any test module imports a library,
and the guard fails a test that still tries to resolve or connect to another host (instead of hanging on it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import start_server

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm: the bundled price map, no download at import
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"  # Agents SDK: no trace upload
os.environ["LANGSMITH_TRACING"] = "false"  # LangChain: no LangSmith tracing
os.environ["LANGCHAIN_TRACING_V2"] = "false"

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(scope="package")
def base_url(tmp_path_factory) -> Iterator[str]:
    # Its own server, unquantized. With int8 (the default) activations are quantized per matrix, so a
    # prompt partly taken from the prefix cache computes slightly different numbers than a cold one, and
    # the 0.5B model's greedy answer to a tool result flipped between "17 degrees ... in Paris" (cold) and
    # "The error occurred while running the tool" (warm). These tests are about the clients, not int8.
    server = start_server(tmp_path_factory.mktemp("clients"), "--model", "default", "--quantize", "none")
    yield f"{server.base_url}/v1"
    server.stop()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse (and report) any name lookup or connection that is not to this machine."""
    attempts: list[object] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def local(address) -> bool:
        return not isinstance(address, tuple) or address[0] in LOOPBACK  # AF_UNIX paths are local

    def guarded_connect(self, address):
        if not local(address):
            attempts.append(address)
            raise ConnectionRefusedError(f"tests/clients: no traffic past loopback ({address!r})")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not local(address):
            attempts.append(address)
            return 111  # ECONNREFUSED
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"tests/clients: no lookups past loopback ({host!r})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield
    assert not attempts, f"a client library tried to reach past loopback: {attempts}"
