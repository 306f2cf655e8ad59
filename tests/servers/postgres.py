"""A private PostgreSQL: its own initdb cluster on a high loopback port, trust auth, torn down after."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers.exim import free_port
from tests.servers.install import apt_install, unavailable
from tests.servers.process import private_dir, run_as, spawn_as, stop, wait_for_port


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str = "postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def private_postgres() -> Iterator[Postgres]:
    if _bindir() is None:
        apt_install("postgresql")
    bindir = _bindir()
    if bindir is None:
        unavailable("PostgreSQL's initdb is missing after installing postgresql")
    assert bindir is not None
    data = private_dir("pg", owner="postgres")
    port = free_port()
    log = data / "server.log"
    try:
        run_as(
            "postgres", [str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        )
        proc = spawn_as(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(data / "db"),
                "-p",
                str(port),
                "-k",
                str(data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            log,
        )
        try:
            wait_for_port(port, proc, log)
            yield Postgres(port)
        finally:
            stop(proc)
    except RuntimeError as exc:
        unavailable(f"cannot start a private PostgreSQL: {exc}")
    finally:
        shutil.rmtree(data, ignore_errors=True)
