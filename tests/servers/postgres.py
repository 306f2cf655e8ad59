"""A private PostgreSQL: its own initdb cluster on a high port of loopback (or of the one address
given, such as a test bed's bridge), trust auth, torn down after."""

from __future__ import annotations

import glob
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers.install import apt_install, unavailable
from tests.servers.process import free_port, private_dir, run_as, spawn_as, stop, wait_for_port


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str = "postgres"
    host: str = "127.0.0.1"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        where = f"host={self.host} port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(where, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresProcess:
    """The postgres process of a private cluster, which a test may stop and start again (an outage)."""

    def __init__(self, bindir: Path, data: Path, port: int, host: str = "127.0.0.1") -> None:
        self.bindir = bindir
        self.data = data
        self.port = port
        self.host = host
        self.log = data / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [str(self.bindir / "postgres"), "-D", str(self.data / "db"), "-p", str(self.port), "-k", str(self.data)]
        args += ["-c", f"listen_addresses={self.host}", "-c", "fsync=off"]
        self.proc = spawn_as("postgres", args, self.log)
        try:
            wait_for_port(self.port, self.proc, self.log, host=self.host)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are cut off at once, as in an outage, rather than
        waited for as SIGTERM's smart shutdown does."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            stop(self.proc)
            self.proc = None


@contextmanager
def private_postgres_process(
    host: str = "127.0.0.1", clients: str | None = None
) -> Iterator[tuple[Postgres, PostgresProcess]]:
    """A private PostgreSQL bound to ``host`` only, and the handle that stops and starts it;
    ``clients`` (a network such as ``10.77.3.0/24``) may connect too, without a password, as
    loopback may (initdb lets in only loopback)."""
    if _bindir() is None:
        apt_install("postgresql")
    bindir = _bindir()
    if bindir is None:
        unavailable("PostgreSQL's initdb is missing after installing postgresql")
    assert bindir is not None
    data = private_dir("pg", owner="postgres")
    server = PostgresProcess(bindir, data, free_port(), host)
    try:
        run_as(
            "postgres", [str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        )
        if clients is not None:
            with (data / "db" / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {clients} trust\n")
        server.start()
        try:
            yield Postgres(server.port, host=host), server
        finally:
            server.stop()
    except RuntimeError as exc:
        unavailable(f"cannot start a private PostgreSQL: {exc}")
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def private_postgres(host: str = "127.0.0.1", clients: str | None = None) -> Iterator[Postgres]:
    with private_postgres_process(host, clients) as (postgres, _):
        yield postgres
