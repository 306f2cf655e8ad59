"""Real servers shared by the whole run: each private, on loopback, started once and torn down.

Every test that needs one is marked ``servers`` (and ``mta`` for Exim, Postfix, Dovecot), so
``scripts/test --quick`` (``-m 'not servers and not deb and not slow'``) runs the rest without any.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.mariadb import MariaDB, private_mariadb
from tests.servers.postgres import Postgres, private_postgres
from tests.servers.slapd import Slapd, private_slapd

# Folders whose every test runs an MTA (tests/servers holds the MTA harness's own tests).
_MTA_FOLDERS = ("mta", "servers")
_SERVER_FIXTURES = {"postgres", "mariadb", "slapd"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by where a test lives and what it asks for; parameters that name a server carry the
    mark themselves (tests/store/conftest.py)."""
    root = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(root).parts[0]
        if folder in _MTA_FOLDERS:
            item.add_marker(pytest.mark.mta)
            item.add_marker(pytest.mark.servers)
        elif _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    with private_mariadb() as server:
        yield server


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    with private_slapd() as server:
        yield server
