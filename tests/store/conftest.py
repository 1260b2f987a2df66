from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import Postgres, new_database, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each backend: a SQLite file, or a fresh database on the throwaway PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'state.sqlite3'}"
    return new_database(request.getfixturevalue("postgres"))
