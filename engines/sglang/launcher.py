"""`--launch`: run `sglang.launch_server` as a child process, keep it alive, stop it with Lodestar.

The child's output goes to Lodestar's log (logger `lodestar.sglang.server`). If the child dies, it is
started again after a backoff that doubles up to a minute and resets once it has stayed up for ten
minutes; meanwhile its worker is out of rotation and requests get 503s with Retry-After.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

log = logging.getLogger("lodestar.sglang")
server_log = logging.getLogger("lodestar.sglang.server")

_MAX_BACKOFF_S = 60.0
_STABLE_S = 600.0  # up this long: the next crash restarts at once again


class Launcher:
    def __init__(self, model_path: str, *, port: int, python: str | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.command = [python or sys.executable, "-m", "sglang.launch_server", "--model-path", model_path,
                        "--host", "127.0.0.1", "--port", str(port),
                        # Lodestar's tool and response_format grammars are llguidance's Lark dialect.
                        "--grammar-backend", "llguidance",
                        # Each event then holds only its new tokens, not all of them again (O(n) per
                        # event instead of O(n^2) per reply for the relay; the reader takes both).
                        "--incremental-streaming-output", *extra_args]
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        log.info("launching SGLang: %s", " ".join(self.command))
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="sglang-supervisor", daemon=True)
        self._supervisor.start()

    def wait_healthy(self, timeout_s: float) -> None:
        """Blocking: until the server answers /health, or raise after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                if httpx.get(f"{self.url}/health", timeout=5, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"the launched SGLang server did not become healthy within {timeout_s:.0f} s "
                           "(see its log lines above)")

    def stop(self, grace_s: float = 30.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        log.info("stopping the launched SGLang server (pid %d)", proc.pid)
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def _spawn(self) -> None:
        env = {**os.environ, **(self.env or {})}
        # Its own process group: SGLang starts scheduler and detokenizer processes that must stop with it.
        proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self._proc = proc
        threading.Thread(target=_forward, args=(proc,), name="sglang-log", daemon=True).start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _STABLE_S:
                backoff = 1.0
            log.error("the launched SGLang server exited with %s; restarting in %.0f s", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            self._spawn()


def _forward(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        server_log.info("%s", line.decode(errors="replace").rstrip())


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
