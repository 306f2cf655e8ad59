"""One database per test on every SQL server quotagate supports: SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

ENGINES = ["sqlite", "postgresql", "mariadb"]


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = f"qg_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db"
    server = request.getfixturevalue("postgres" if request.param == "postgresql" else "mariadb")
    return str(server.create_database(name))
