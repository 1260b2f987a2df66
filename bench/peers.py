"""The servers the comparison benchmark runs: Lodestar and the peers users would pick instead.

Peers live under `bench/.peers/` (built on first use; never Lodestar dependencies): llama.cpp's
`llama-server` compiled from source (bench/llama_server.py), `transformers serve` in its own virtual
environment. They serve the very weights Lodestar serves: llama-server the default model's GGUF file,
`transformers serve` the folder Lodestar converted from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.llama_server import LLAMA_CPP_PYTHON, llama_server_binary
from tests.conftest import ROOT, free_port, start_server

PEERS_DIR = ROOT / "bench" / ".peers"
DATA_DIR = Path("~/.local/share/lodestar").expanduser()
# The context each llama-server slot gets (its --ctx-size is divided among the slots).
CONTEXT_PER_SLOT = 8192


@dataclass
class Running:
    name: str
    base_url: str
    model: str  # the name requests carry
    stop: Callable[[], None]
    no_eos: dict[str, Any]  # request fields that keep it generating until max_tokens
    session_headers: Callable[[str], dict[str, str]] = field(default=lambda _: {})
    headers: dict[str, str] = field(default_factory=dict)  # sent with every streamed request
    notes: str = ""
    exit_code: Callable[[], int | None] = field(default=lambda: None)  # not None once the server has exited
    log: Path | None = None


def default_gguf() -> Path:
    """The default model's GGUF, assembled once from its PyPI parts and checked against its sha256."""
    from engines.embedded.catalog import find_catalog_model
    from engines.embedded.loader import _hash_and_assemble

    entry = find_catalog_model("default")
    assert entry is not None
    target = DATA_DIR / "gguf" / entry.gguf_name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(".partial")
        digest = _hash_and_assemble(entry.part_paths(), staged)
        if digest != entry.gguf_sha256:
            staged.unlink()
            raise RuntimeError(f"the assembled GGUF has sha256 {digest}, expected {entry.gguf_sha256}")
        os.replace(staged, target)
    return target


def default_folder() -> Path:
    from engines.embedded.loader import resolve_model_folder

    return resolve_model_folder("default", DATA_DIR)[0]


def _venv(name: str, requirements: list[str], env: dict[str, str] | None = None) -> Path:
    """bench/.peers/<name>: a virtual environment with `requirements`, built once (may compile)."""
    folder = PEERS_DIR / name
    python = folder / "bin" / "python"
    stamp = folder / ".installed"
    wanted = "\n".join(requirements)
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    print(f"installing {' '.join(requirements)} into {folder} (once; may compile for several minutes)",
          flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True,
                   env={**os.environ, **(env or {})})
    stamp.write_text(wanted)
    return python


def _wait(proc: subprocess.Popen, url: str, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stopper(proc: subprocess.Popen) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return stop


def start_lodestar(logs: Path, *extra: str, name: str = "lodestar") -> Running:
    server = start_server(logs, "--model", "default", *extra)
    return Running(name, server.base_url, "default", server.stop, {"ignore_eos": True},
                   session_headers=lambda conv: {"X-Session-ID": conv}, exit_code=server.proc.poll,
                   log=server.log_path)


def start_llama_cpp(logs: Path, threads: int, slots: int) -> Running:
    """llama.cpp's own server on the same GGUF: `slots` parallel slots (continuous batching), each with its
    prompt cache, `--cache-reuse` on (a new prompt reuses cached chunks of 256+ tokens by shifting them)."""
    binary = llama_server_binary()
    gguf = default_gguf()
    port = free_port()
    log = logs / f"llama-server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--model", str(gguf), "--alias", "default", "--host", "127.0.0.1", "--port", str(port),
             "--threads", str(threads), "--threads-batch", str(threads), "--parallel", str(slots),
             "--ctx-size", str(CONTEXT_PER_SLOT * slots), "--cache-reuse", "256", "--no-webui"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    _wait(proc, f"http://127.0.0.1:{port}/health", log)
    # llama-server shuts a connection down after each streamed response although its headers say keep-alive
    # (strace: shutdown(SHUT_WR) right after the last chunk): a client that reuses the connection reads EOF,
    # "Server disconnected without sending a response". Each streamed request therefore asks for a new one.
    return Running("llama.cpp", f"http://127.0.0.1:{port}", "default", _stopper(proc), {"ignore_eos": True},
                   headers={"Connection": "close"},
                   notes=f"llama-server from llama-cpp-python {LLAMA_CPP_PYTHON}'s llama.cpp (GGML_NATIVE), same "
                         f"GGUF, {slots} slots of {CONTEXT_PER_SLOT} tokens, --cache-reuse 256",
                   exit_code=proc.poll, log=log)


def start_transformers(logs: Path) -> Running:
    """`transformers serve` on the folder Lodestar converted from the same GGUF (fp32)."""
    from importlib.metadata import version

    # torch resolves to the CPU wheel the machine's pip configuration points at.
    python = _venv("transformers", [f"transformers[serving]=={version('transformers')}",
                                    f"torch=={version('torch').split('+')[0]}"])
    port = free_port()
    log = logs / f"transformers-{port}.log"
    folder = default_folder()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(python.parent / "transformers"), "serve", str(folder), "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _wait(proc, f"http://127.0.0.1:{port}/health", log)  # its /v1/models lists the hub cache (none here)
    return Running("transformers serve", f"http://127.0.0.1:{port}", str(folder), _stopper(proc),
                   {}, notes="transformers serve, fp32, same weights")


def start_llama_cpp_or_none(logs: Path, threads: int, slots: int) -> Running | str:
    try:
        return start_llama_cpp(logs, threads, slots)
    except Exception as exc:  # reported in the results: the peer did not run here
        return f"{type(exc).__name__}: {exc}"


def start_transformers_or_none(logs: Path) -> Running | str:
    try:
        return start_transformers(logs)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
