"""Admins' own schemas, as the tests create them: PostfixAdmin's and the classic recipe's."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import create_engine, text

POSTFIXADMIN = {
    "mysql": [
        """CREATE TABLE mailbox (
            username varchar(255) NOT NULL, password varchar(255) NOT NULL DEFAULT '',
            name varchar(255) NOT NULL DEFAULT '', maildir varchar(255) NOT NULL DEFAULT '',
            quota bigint(20) NOT NULL DEFAULT 0, local_part varchar(255) NOT NULL,
            domain varchar(255) NOT NULL, created datetime NOT NULL DEFAULT '2000-01-01 00:00:00',
            modified datetime NOT NULL DEFAULT '2000-01-01 00:00:00', active tinyint(1) NOT NULL DEFAULT 1,
            phone varchar(30) NOT NULL DEFAULT '', email_other varchar(255) NOT NULL DEFAULT '',
            PRIMARY KEY (username), KEY domain (domain)
        ) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""",
        """CREATE TABLE quota2 (
            username varchar(100) NOT NULL, bytes bigint(20) NOT NULL DEFAULT 0,
            messages int(11) NOT NULL DEFAULT 0, PRIMARY KEY (username)
        ) DEFAULT CHARSET=utf8mb4""",
    ],
    "postgresql": [
        """CREATE TABLE mailbox (
            username varchar(255) NOT NULL PRIMARY KEY, password varchar(255) NOT NULL DEFAULT '',
            name varchar(255) NOT NULL DEFAULT '', maildir varchar(255) NOT NULL DEFAULT '',
            quota bigint NOT NULL DEFAULT 0, local_part varchar(255) NOT NULL,
            domain varchar(255) NOT NULL, created timestamp with time zone DEFAULT now(),
            modified timestamp with time zone DEFAULT now(), active boolean NOT NULL DEFAULT true,
            phone varchar(30) NOT NULL DEFAULT '', email_other varchar(255) NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE quota2 (
            username varchar(100) NOT NULL PRIMARY KEY, bytes bigint NOT NULL DEFAULT 0,
            messages integer NOT NULL DEFAULT 0
        )""",
    ],
}
CLASSIC = [
    """CREATE TABLE mailbox (
        username varchar(64) NOT NULL, domainname varchar(255) NOT NULL,
        password varchar(255) NOT NULL DEFAULT '', quota bigint NOT NULL DEFAULT 0,
        enabled smallint NOT NULL DEFAULT 1, overquota smallint NOT NULL DEFAULT 0,
        PRIMARY KEY (username, domainname)
    )"""
]


def create(url: str, preset: str) -> None:
    dialect = "postgresql" if url.startswith("postgresql") else "mysql" if url.startswith("mysql") else "sqlite"
    statements = CLASSIC if preset == "classic" else POSTFIXADMIN["mysql" if dialect == "sqlite" else dialect]
    if dialect == "sqlite":
        statements = [
            s.replace("bigint(20)", "bigint")
            .replace("int(11)", "int")
            .replace("tinyint(1)", "smallint")
            .replace(", KEY domain (domain)", "")
            .replace(" COLLATE=utf8mb4_unicode_ci", "")
            .replace(" DEFAULT CHARSET=utf8mb4", "")
            for s in statements
        ]
    engine = create_engine(url)
    with engine.begin() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)
    engine.dispose()


def add_mailbox(url: str, preset: str, address: str, quota: int, maildir: str = "", active: bool = True) -> None:
    """A row as the admin's own tools would write it."""
    local, _, domain = address.rpartition("@")
    engine = create_engine(url)
    with engine.begin() as conn:
        if preset == "classic":
            sql = "INSERT INTO mailbox (username, domainname, quota, enabled) VALUES (:l, :d, :q, :a)"
        else:
            sql = (
                "INSERT INTO mailbox (username, maildir, quota, local_part, domain, active) "
                "VALUES (:u, :m, :q, :l, :d, :a)"
            )
        flag: bool | int = active if url.startswith("postgresql") and preset != "classic" else int(active)
        conn.execute(text(sql), {"u": address, "m": maildir, "q": quota, "l": local, "d": domain, "a": flag})
    engine.dispose()


def add_alias_domains(
    url: str, domains: dict[str, str], aliases: Sequence[tuple[str, str]] = (), inactive: Collection[str] = ()
) -> None:
    """PostfixAdmin's ``alias_domain`` (each alias domain to its target; active unless named in
    ``inactive``) and ``alias`` (address -> goto) tables, as its own setup makes them, with these rows."""
    active = "boolean NOT NULL DEFAULT true" if url.startswith("postgresql") else "smallint NOT NULL DEFAULT 1"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE alias_domain (alias_domain varchar(255) NOT NULL PRIMARY KEY,"
                f" target_domain varchar(255) NOT NULL, active {active})"
            )
        )
        conn.execute(
            text(
                "CREATE TABLE alias (address varchar(255) NOT NULL PRIMARY KEY, goto text NOT NULL,"
                f" domain varchar(255) NOT NULL, active {active})"
            )
        )
        for alias, target in domains.items():
            on: bool | int = alias not in inactive if url.startswith("postgresql") else int(alias not in inactive)
            conn.execute(
                text("INSERT INTO alias_domain (alias_domain, target_domain, active) VALUES (:a, :t, :on)"),
                {"a": alias, "t": target, "on": on},
            )
        for address, goto in aliases:
            conn.execute(
                text("INSERT INTO alias (address, goto, domain) VALUES (:a, :g, :d)"),
                {"a": address, "g": goto, "d": address.rpartition("@")[2]},
            )
    engine.dispose()
