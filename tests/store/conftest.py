from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import Postgres, start_postgres


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
