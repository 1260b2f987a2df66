"""python -m app serve [--host H] [--port P] [--model ID_OR_PATH] [--api-key KEY ...] [--config FILE]"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from app import logs
from core.config import add_flags, load_settings
from core.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Lodestar inference server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API")
    add_flags(serve)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"lodestar: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.server.log_level, settings.server.log_format)

    import uvicorn

    from app.backend import build_served_model
    from app.main import create_app
    from app.transport import protocol_class
    from app.workers import serve_processes

    # uvicorn logs through our root handler (log_config=None); our access line carries the request id.
    # http: uvicorn's httptools protocol with timeouts and size limits (app/transport.py); ws="none": there
    # are no websocket routes, so an Upgrade request is not handed to a protocol those bounds do not cover.
    server = settings.server
    common: dict[str, Any] = dict(host=server.host, port=server.port, log_level=server.log_level, log_config=None,
                  access_log=False, timeout_graceful_shutdown=math.ceil(server.shutdown_grace_s), ws="none")
    if server.workers > 1:  # each process builds its own app from the settings handed down (app/workers.py)
        return serve_processes(settings, common)
    else:
        uvicorn.run(create_app(settings, lambda: build_served_model(settings)),
                    http=protocol_class(settings.connections), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
