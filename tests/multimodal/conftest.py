"""Fixtures for the image-layer tests: a local origin, a TLS origin with a throwaway CA, an async runner."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .origin import Origin

TLS_NAME = "img.example.test"


def run(coro, timeout: float = 15.0):
    """Run a coroutine with a hard bound, so a hung fetch fails the test instead of the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture()
def origin() -> Iterator[Origin]:
    server = Origin().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a leaf certificate for TLS_NAME, made with the openssl CLI (part of the base system)."""
    assert shutil.which("openssl"), "the TLS tests need the openssl command"
    folder = tmp_path_factory.mktemp("tls")
    (folder / "leaf.ext").write_text(
        f"subjectAltName=DNS:{TLS_NAME}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={TLS_NAME}"],
        ["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext"],
    ]
    for command in commands:
        subprocess.run(command, cwd=folder, check=True, capture_output=True, timeout=30)
    return folder


@pytest.fixture()
def tls_origin(certificates: Path) -> Iterator[Origin]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    server = Origin(tls=context).start()
    yield server
    server.stop()


@pytest.fixture()
def client_tls(certificates: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates / "ca.pem"))
