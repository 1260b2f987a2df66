from __future__ import annotations

from pathlib import Path

import pytest

from tests.postgres import new_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each backend: a SQLite file, or a fresh database on the throwaway PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'state.sqlite3'}"
    return new_database(request.getfixturevalue("postgres"))
