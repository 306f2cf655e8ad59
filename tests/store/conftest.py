"""One database per test on every SQL server quotagate supports, and every store on its server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.model import Limits, Mailbox
from quotagate.store import store_for
from tests.servers import schemas
from tests.store.backends import BACKENDS, SQLITE_SCHEMES, Backend, ldap_flag, sql_flag, store_config

ENGINES = ["sqlite", "postgresql", "mariadb"]


def on_server(value: object, server: str, id_: str) -> object:
    """A parameter that needs a real server (all but SQLite) is marked ``servers``: ``--quick`` skips it."""
    return value if server == "sqlite" else pytest.param(value, id=id_, marks=pytest.mark.servers)


@pytest.fixture(params=[on_server(e, e, e) for e in ENGINES])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database for the SQLAlchemy store: SQLite through its driver (a bare sqlite:/// is served
    by the standard library's sqlite3, see quotagate.store.sqlite)."""
    name = f"qg_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        return f"sqlite+pysqlite:///{tmp_path}/{name}.db"
    server = request.getfixturevalue("postgres" if request.param == "postgresql" else "mariadb")
    return str(server.create_database(name))


@pytest.fixture(params=[on_server(b, b[1], b[0]) for b in BACKENDS], ids=[b[0] for b in BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    id_, server, preset = request.param
    if server == "slapd":
        slapd = request.getfixturevalue("slapd")
        tree = slapd.new_tree()
        config = store_config(
            {
                "url": slapd.url,
                "state": f"sqlite:///{tmp_path}/state.db",
                "ldap": {"bind_dn": "cn=admin,dc=example,dc=org", "password": "test-secret", "base": tree},
            }
        )
        uids = iter(range(10**6))

        def add(address: str, quota: int) -> None:
            slapd.add_mailbox(tree, f"u{next(uids)}", address, quota)

        flagged = ldap_flag(slapd, tree)
    else:
        name = f"qg_{uuid.uuid4().hex[:12]}"
        if server == "sqlite":
            url = f"{SQLITE_SCHEMES.get(id_, 'sqlite')}:///{tmp_path}/{name}.db"
        else:
            url = str(request.getfixturevalue({"postgresql": "postgres"}.get(server, server)).create_database(name))
        if preset != "quotagate":
            schemas.create(url, preset)
        config = store_config({"url": url, "schema": preset})
        flagged = sql_flag(url, preset)
    store = store_for(config)
    store.migrate()
    if server != "slapd":
        if preset == "quotagate":

            def add(address: str, quota: int) -> None:
                store.upsert_mailboxes([Mailbox(address, Limits(quota))])
        else:

            def add(address: str, quota: int) -> None:
                schemas.add_mailbox(url, preset, address, quota)

    try:
        yield Backend(config, store, add, flagged)
    finally:
        store.close()
