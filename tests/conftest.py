"""Real servers shared by the whole run: each private, on loopback, started once and torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.mariadb import MariaDB, private_mariadb
from tests.servers.postgres import Postgres, private_postgres
from tests.servers.slapd import Slapd, private_slapd


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
