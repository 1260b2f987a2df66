"""--workers N: N server processes sharing one port (uvicorn's supervisor starts them and restarts one that
dies). Each process is a whole Lodestar with its own router over the same SGLang workers; what they share
lives in the store (store/). The parent hands its settings to the processes in the environment, so every
process serves exactly what the command line, environment and file said."""

from __future__ import annotations

import os

import msgspec
from litestar import Litestar

from app import logs
from app.transport import LodestarHTTP, protocol_class
from core.settings import Settings

SETTINGS_ENV = "_LODESTAR_WORKER_SETTINGS"  # not a LODESTAR_<KEY> setting: core/config.py never reads it


def hand_down(settings: Settings) -> None:
    """Put the settings where the worker processes will find them (they inherit the environment)."""
    os.environ[SETTINGS_ENV] = msgspec.json.encode(settings).decode()


def handed_down() -> Settings:
    return msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)


def create_worker_app() -> Litestar:
    """uvicorn's factory, called in each worker process."""
    from app.backend import build_served_model
    from app.main import create_app

    settings = handed_down()
    logs.configure(settings.server.log_level, settings.server.log_format)
    return create_app(settings, lambda: build_served_model(settings))


def __getattr__(name: str) -> type[LodestarHTTP]:
    """`WorkerHTTP`: the bounded HTTP protocol (app/transport.py) for uvicorn to import by name."""
    if name == "WorkerHTTP":
        return protocol_class(handed_down().connections)
    raise AttributeError(name)
