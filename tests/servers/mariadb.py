"""A private MariaDB: its own data directory on a high loopback port, torn down after."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers.install import require_command, unavailable
from tests.servers.process import free_port, private_dir, run_as, spawn_as, stop, wait_for_port

USER = "quotagate"
PASSWORD = "test-secret"


@dataclass(frozen=True)
class MariaDB:
    port: int
    socket: Path

    def url(self, database: str) -> str:
        return f"mysql+pymysql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as c:
                c.execute(f"DROP DATABASE IF EXISTS `{name}`")
                c.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
        return self.url(name)

    @contextmanager
    def sql_mode(self, extra: str) -> Iterator[None]:
        """Add ``extra`` to the server's global sql_mode (for new connections) until the block ends."""
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as c:
                c.execute("SELECT @@GLOBAL.sql_mode")
                row = c.fetchone()
                before = str(row[0]) if row else ""
                c.execute("SET GLOBAL sql_mode = %s", (f"{before},{extra}".strip(","),))
            yield
        finally:
            with conn.cursor() as c:
                c.execute("SET GLOBAL sql_mode = %s", (before,))
            conn.close()


@contextmanager
def private_mariadb() -> Iterator[MariaDB]:
    install_db = require_command("mariadb-install-db", "mariadb-server")
    server = require_command("mariadbd", "mariadb-server")
    data = private_dir("mariadb", owner="mysql")
    port = free_port()
    sock = data / "mysqld.sock"
    log = data / "server.log"
    try:
        run_as(
            None,
            [
                install_db,
                "--no-defaults",
                f"--datadir={data / 'db'}",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
        )
        proc = spawn_as(
            None,
            [
                server,
                "--no-defaults",
                f"--datadir={data / 'db'}",
                "--user=mysql",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--socket={sock}",
                f"--pid-file={data / 'mysqld.pid'}",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",
            ],
            log,
        )
        try:
            wait_for_port(port, proc, log)
            _grant(sock)
            yield MariaDB(port, sock)
        finally:
            stop(proc)
    except RuntimeError as exc:
        unavailable(f"cannot start a private MariaDB: {exc}")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _grant(sock: Path) -> None:
    import pymysql

    conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
    try:
        with conn.cursor() as c:
            c.execute(f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'")
            c.execute(f"GRANT ALL ON *.* TO '{USER}'@'127.0.0.1'")
    finally:
        conn.close()
