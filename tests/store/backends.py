"""Every store quotagate has, set up on its real server, behind one small test interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, MetaData, Table, Text, create_engine, text

from quotagate.config import StoreConfig, parse_config
from quotagate.store import Store, schema
from quotagate.store.presets import PRESETS

# (id, server, schema preset)
BACKENDS = [
    ("sqlite", "sqlite", "quotagate"),
    ("sqlite-sqlalchemy", "sqlite", "quotagate"),
    ("postgresql", "postgresql", "quotagate"),
    ("mariadb", "mariadb", "quotagate"),
    ("sqlite-classic", "sqlite", "classic"),
    ("postgresql-postfixadmin", "postgresql", "postfixadmin"),
    ("postgresql-classic", "postgresql", "classic"),
    ("mariadb-postfixadmin", "mariadb", "postfixadmin"),
    ("mariadb-classic", "mariadb", "classic"),
    ("ldap", "slapd", "ldap"),
]

# The URL scheme of each SQLite backend: quotagate's own tables are served by the standard
# library's sqlite3 unless the URL names SQLAlchemy's driver, which every other schema uses.
SQLITE_SCHEMES = {"sqlite-sqlalchemy": "sqlite+pysqlite"}


def store_config(table: dict[str, Any]) -> StoreConfig:
    """A ``[store]`` table, validated as quotagate.toml's would be."""
    return parse_config({"store": table}).store


@dataclass
class Backend:
    """A store plus what the admin and the MTA do beside it: add a mailbox, read its flag."""

    config: StoreConfig
    store: Store
    add: Callable[[str, int], None]
    flagged: Callable[[str], bool]


def sql_flag(url: str, preset: str) -> Callable[[str], bool]:
    def flagged(address: str) -> bool:
        if preset == "quotagate":
            sql, params = "SELECT over_quota FROM quotagate_usage WHERE address = :a", {"a": address}
        elif preset == "postfixadmin":
            sql, params = f"SELECT {PRESETS[preset].overquota} FROM mailbox WHERE username = :a", {"a": address}
        else:
            local, _, domain = address.rpartition("@")
            sql = "SELECT overquota FROM mailbox WHERE username = :l AND domainname = :d"
            params = {"l": local, "d": domain}
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                value = conn.execute(text(sql), params).scalar()
        finally:
            engine.dispose()
        return bool(value)

    return flagged


def ldap_flag(slapd: object, tree: str) -> Callable[[str], bool]:
    def flagged(address: str) -> bool:
        conn = slapd.connection()  # type: ignore[attr-defined]
        try:
            conn.search(tree, f"(&(mail={address})(quotagateOverQuota=TRUE))", attributes=["mail"])
            return bool(conn.entries)
        finally:
            conn.unbind()

    return flagged


def as_in_version_1(table: Table) -> Table:
    """``table`` as migration 1 made it: without the columns later migrations add, and with the
    plain TEXT of the columns later migrations widen."""
    later = {column for m in schema.MIGRATIONS[1:] for t, column in m.columns if t.name == table.name}
    widened = {column for m in schema.MIGRATIONS[1:] for t, column in m.widened if t.name == table.name}

    def as_made(column: Column[Any]) -> Column[Any]:
        copy = column._copy()
        if column.name in widened:
            copy.type = Text()
        return copy

    return Table(table.name, MetaData(), *(as_made(c) for c in table.columns if c.name not in later))
