"""A throwaway PostgreSQL for the tests: Debian's server binaries (installed by `make test` if missing), a
cluster in a temporary folder, run as an unprivileged user (PostgreSQL refuses root), listening on a free
127.0.0.1 port and on a Unix socket in that folder; stopped by its own PID file afterwards."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

_BIN_ROOT = Path("/usr/lib/postgresql")
_USER = "postgres"  # created by Debian's postgresql package; used when the tests run as root
_TIMEOUT_S = 60


def server_bin() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted((p for p in _BIN_ROOT.glob("*/bin") if (p / "initdb").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        raise RuntimeError(f"no PostgreSQL server under {_BIN_ROOT}: `make test` installs Debian's postgresql")
    return found[-1]


@dataclass
class Postgres:
    folder: Path
    port: int
    bin: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://lodestar@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_as_user(self.folder, [str(self.bin / args[0]), *args[1:]]), check=True,
                              capture_output=True, text=True, timeout=_TIMEOUT_S)

    def start(self) -> None:
        """Start (or start again) the server on its cluster, port and socket folder."""
        data = self.folder / "data"
        options = f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off -c synchronous_commit=off"
        try:
            self._run("pg_ctl", "-D", str(data), "-l", str(self.folder / "server.log"), "-o", options, "-w",
                      "-t", str(_TIMEOUT_S), "start")
        except subprocess.CalledProcessError as exc:
            log = self.folder / "server.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{text[-2000:]}") from exc

    def stop(self) -> None:
        """Stops the server this object started (pg_ctl reads its PID from the cluster's postmaster.pid)."""
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")


def start_postgres(folder: Path) -> Postgres:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        account = pwd.getpwnam(_USER)
        shutil.chown(folder, account.pw_uid, account.pw_gid)
    server = Postgres(folder, free_port(), server_bin())
    server._run("initdb", "-D", str(folder / "data"), "-U", "lodestar", "--auth=trust", "-E", "UTF8", "--no-sync")
    server.start()
    return server


def _as_user(folder: Path, argv: list[str]) -> list[str]:
    """As root, run PostgreSQL's programs as the unprivileged account that owns the folder."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", _USER, "--", *argv]


def new_database(server: Postgres) -> str:
    """A fresh, empty database on `server`; its URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + f"/{name}"
