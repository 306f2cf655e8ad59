"""quotagate beside real delivery agents: one prepared install of each per session, a spool and a
config of its own per test, and the CLI (``scan``, ``check --size``) run as an admin would."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quotagate.accounting import profile_for
from quotagate.cli import main
from quotagate.config import load_config
from quotagate.model import Limits, Mailbox, Reading
from quotagate.store import Store, open_store
from quotagate.usage.folders import counted
from tests.servers.courier import Courier
from tests.servers.dovecot import Dovecot
from tests.servers.exim import Exim, untrust
from tests.servers.mailuser import own
from tests.servers.process import free_port, private_dir
from tests.servers.procmail import Procmail

DOMAIN = "example.org"
ACCEPT, REJECT, DUNNO = 0, 1, 3


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Gate:
    """quotagate's side: a config file and an SQLite store for the mailboxes in ``spool``
    (``spool/<local>/Maildir``, or ``spool/<local>`` for mbox files)."""

    def __init__(self, work: Path, spool: Path) -> None:
        self.work = work
        self.spool = spool
        self.config = work / "quotagate.toml"
        self.store: Store = open_store(f"sqlite:///{work}/quotagate.db")
        self.store.migrate()
        self.output = ""

    def configure(
        self, accounting: str, layout: str = "{local}/Maildir", maildir_layout: str = "maildir++", **options: Any
    ) -> None:
        """``[spool] accounting`` and its ``accounting_options``; ``maildir_layout`` as ``[spool]``'s."""
        extra = "".join(f"{k} = {_toml(v)}\n" for k, v in options.items())
        self.config.write_text(
            f'[store]\nurl = "sqlite:///{self.work}/quotagate.db"\n'
            f'[spool]\nroot = "{self.spool}"\nlayout = "{layout}"\naccounting = "{accounting}"\n'
            f'maildir_layout = "{maildir_layout}"\n'
            f"[spool.accounting_options]\n{extra}"
            f'[scan]\nworkers = 1\nlock_file = "{self.work}/scan.lock"\n'
            f'[publish]\nfile = "{self.work}/overquota"\n'
            f'[policy]\ncontrol_socket = "{self.work}/control.sock"\n'
        )

    def add(self, local: str, limits: Limits) -> str:
        address = f"{local}@{DOMAIN}"
        self.store.upsert_mailboxes([Mailbox(address, limits)])
        return address

    def run(self, *args: str) -> int:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--config", str(self.config), *args])
        self.output = out.getvalue()
        return code

    def scan(self, *args: str) -> None:
        assert self.run("scan", "--full", *args) == 0, self.output

    def accepts(self, local: str, size: int) -> bool:
        """``quotagate check --size``: True for accept, False for reject; anything else fails."""
        code = self.run("check", f"{local}@{DOMAIN}", "--size", str(size))
        assert code in (ACCEPT, REJECT), self.output
        return code == ACCEPT

    def refuses(self, local: str, size: int) -> bool:
        """``quotagate check --size``: True for reject, False for accept or dunno (the MTA carries
        on); anything else fails."""
        code = self.run("check", f"{local}@{DOMAIN}", "--size", str(size))
        assert code in (ACCEPT, REJECT, DUNNO), self.output
        return code == REJECT

    def reading(self, local: str) -> Reading:
        r = self.store.reading(f"{local}@{DOMAIN}")
        assert r is not None
        assert r.usage.known, r.reason
        return r

    def counted(self, local: str) -> tuple[int, int]:
        r = self.reading(local)
        return r.bytes, r.messages

    def files(self, local: str) -> tuple[int, int]:
        """What the files count, whatever the maildirsize claims (the reading may count the claims:
        see quotagate.accounting.enforced)."""
        config = load_config(self.config)
        return counted(self.reading(local).usage.folders, config.folders, profile_for(config.spool).leaves_out_folder)


@pytest.fixture
def work() -> Iterator[Path]:
    path = private_dir("agents")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gate(work: Path) -> Iterator[Gate]:
    spool = work / "spool"
    own(spool)
    g = Gate(work, spool)
    yield g
    g.store.close()


@pytest.fixture(scope="session")
def dovecot_install() -> Iterator[Dovecot]:
    path = private_dir("dovecot")
    yield Dovecot(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dovecot(dovecot_install: Dovecot, gate: Gate) -> Dovecot:
    """The session's Dovecot with its homes in this test's spool."""
    dovecot_install.homes = gate.spool
    return dovecot_install


@pytest.fixture(scope="session")
def courier() -> Courier:
    return Courier()


@pytest.fixture(scope="session")
def procmail() -> Iterator[Procmail]:
    path = private_dir("procmail")
    yield Procmail(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def exim(work: Path, gate: Gate) -> Iterator[Exim]:
    server = Exim(work / "exim", free_port(), gate.spool)
    yield server
    untrust(server.config)
