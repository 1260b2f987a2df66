"""--launch: Lodestar starts `python -m sglang.launch_server` itself, restarts it when it dies and stops it
on shutdown. A shim `sglang` package on PYTHONPATH makes that command run the stand-in worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import openai

from tests.conftest import ROOT, free_port, start_server

SHIM = '''"""Test shim: sglang.launch_server's command line, served by Lodestar's stand-in worker."""
from tests.sglang.standin import main

main()
'''


def child_pid(port: int) -> int | None:
    """The launched server: the process whose command line is sglang.launch_server on this port."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sglang.launch_server" in cmd and str(port).encode() in cmd:
            return int(entry.name)
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_launch_supervise_and_stop(tmp_path: Path):
    (tmp_path / "shim" / "sglang").mkdir(parents=True)
    (tmp_path / "shim" / "sglang" / "__init__.py").write_text("")
    (tmp_path / "shim" / "sglang" / "launch_server.py").write_text(SHIM)
    sglang_port = free_port()
    server = start_server(tmp_path, "--engine", "sglang", "--launch", "--model", "smollm2", "--sglang-port",
                          str(sglang_port), "--sglang-health-interval-s", "1", "--sglang-retry-s", "1",
                          env={"PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{ROOT}"}, timeout=180)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    ask = {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
           "max_tokens": 20, "temperature": 0}
    try:
        assert "Paris" in client.chat.completions.create(**ask).choices[0].message.content
        first = child_pid(sglang_port)
        assert first is not None
        # Launched to stream incrementally (each event only its new tokens): the worker says so.
        info = httpx.get(f"http://127.0.0.1:{sglang_port}/server_info", timeout=10).json()
        assert info["incremental_streaming_output"] is True
        os.kill(first, signal.SIGKILL)  # the launched server dies: Lodestar starts it again
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pid = child_pid(sglang_port)
            if pid not in (None, first):
                try:
                    if httpx.get(f"http://127.0.0.1:{sglang_port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        else:
            raise AssertionError("the launched server was not restarted:\n" + server.log()[-3000:])
        reply = None
        while time.monotonic() < deadline:  # back in rotation after its next health probe
            try:
                reply = client.chat.completions.create(**ask)
                break
            except openai.APIStatusError:
                time.sleep(0.5)
        assert reply is not None and "Paris" in reply.choices[0].message.content
        assert "lodestar.sglang.server" in server.log()  # its output is forwarded to Lodestar's log
    finally:
        server.stop()
    second = child_pid(sglang_port)
    assert second is None or not alive(second)  # stopped with Lodestar
