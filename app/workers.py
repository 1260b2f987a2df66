"""--workers N: N server processes on one port. Each process is a whole Lodestar with its own router over the
same SGLang workers; what they share lives in the store (store/). The parent hands its settings to the
processes in the environment, so every process serves exactly what the command line, environment and file
said; it restarts a process that dies, and passes SIGTERM/SIGINT on for a graceful stop.

Each process listens on its own socket with SO_REUSEPORT, so the kernel spreads new connections over the
processes. (One shared socket, as uvicorn's own --workers has, lets whichever process wakes first accept a
whole burst of connections, and kept-alive connections then stay where they landed.)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

import msgspec
from litestar import Litestar

from app import logs
from app.transport import LodestarHTTP, protocol_class
from core.settings import Settings

SETTINGS_ENV = "_LODESTAR_WORKER_SETTINGS"  # not a LODESTAR_<KEY> setting: core/config.py never reads it
_EARLY_EXIT_S = 30.0  # a process that ends this soon after its start failed to start: the parent gives up
log = logging.getLogger("lodestar.workers")


def hand_down(settings: Settings) -> None:
    """Put the settings where the worker processes will find them (they inherit the environment)."""
    os.environ[SETTINGS_ENV] = msgspec.json.encode(settings).decode()


def handed_down() -> Settings:
    return msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)


def create_worker_app() -> Litestar:
    """uvicorn's factory, called in each worker process. The process listens only once its model is
    loaded, so the port's connections go to processes that can serve them."""
    from app.backend import build_served_model
    from app.main import create_app

    settings = handed_down()
    logs.configure(settings.server.log_level, settings.server.log_format)
    return create_app(settings, lambda: build_served_model(settings), load_first=True)


def __getattr__(name: str) -> type[LodestarHTTP]:
    """`WorkerHTTP`: the bounded HTTP protocol (app/transport.py) for uvicorn to import by name."""
    if name == "WorkerHTTP":
        return protocol_class(handed_down().connections)
    raise AttributeError(name)


def serve_processes(settings: Settings, uvicorn_options: dict[str, Any]) -> int:
    """Run `settings.server.workers` server processes until SIGTERM or SIGINT; the exit code."""
    hand_down(settings)
    context = multiprocessing.get_context("spawn")
    count = settings.server.workers

    def start() -> tuple[Any, float]:
        process = context.Process(target=_serve_one, args=(uvicorn_options,), daemon=False)
        process.start()
        log.info("started server process [%d]", process.pid)
        return process, time.monotonic()

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    processes = [start() for _ in range(count)]
    code = 0
    while not stopping.wait(0.5):
        for i, (process, started) in enumerate(processes):
            if process.is_alive():
                continue
            if time.monotonic() - started < _EARLY_EXIT_S and process.exitcode != 0:
                log.error("server process [%d] failed to start (exit %s): stopping", process.pid, process.exitcode)
                code = 3
                stopping.set()
                break
            log.warning("server process [%d] ended (exit %s): starting another", process.pid, process.exitcode)
            processes[i] = start()
    grace = settings.server.shutdown_grace_s + 5
    for process, _ in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: the process finishes its running requests first
    for process, _ in processes:
        process.join(grace)
        if process.is_alive():
            process.kill()
            process.join()
    return code


def _serve_one(options: dict[str, Any]) -> None:
    """One server process: its own SO_REUSEPORT socket on the shared address."""
    import uvicorn

    host, port = options["host"], options["port"]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    config = uvicorn.Config("app.workers:create_worker_app", factory=True, http="app.workers:WorkerHTTP", **options)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # its start-up failed (the store unreachable, ...): tell the parent
        raise SystemExit(3)
