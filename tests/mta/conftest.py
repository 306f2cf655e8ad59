"""A spool, a quotagate config and a private Exim for the daemon-less RCPT check."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.servers.exim import Exim, owned_by_mail_user, untrust
from tests.servers.process import free_port

DOMAIN = "example.org"
QUOTA = 10_000
# Local parts that break or change the meaning of a query built without quoting.
HOSTILE = [
    "o'brien",
    'quo"te',
    "back\\slash",
    "semi;colon",
    "star*",
    "paren(s)",
    "per%cent",
    "under_score",
    "dash--dash",
]


@dataclass
class Site:
    work: Path
    spool: Path
    config: Path

    def maildir(self, local: str) -> Path:
        return self.spool / DOMAIN / local / "Maildir"

    def fill(self, local: str, size: int, name: str = "1700000000.M1P1.test") -> None:
        md = self.maildir(local)
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        (md / "cur" / f"{name},S={size}:2,S").write_bytes(b"x" * size)
        owned_by_mail_user(self.spool)

    def empty(self, local: str) -> None:
        for f in (self.maildir(local) / "cur").iterdir():
            f.unlink()

    def quotagate(self, *args: str) -> int:
        return main(["--config", str(self.config), *args])

    def full_and_roomy(self, full: int = QUOTA + 1) -> None:
        """The two mailboxes most tests ask about, each of QUOTA: ``full`` holding ``full`` bytes
        (over it by default), ``roomy`` 10; then a scan."""
        for local in ("full", "roomy"):
            assert self.quotagate("mailbox", "add", f"{local}@{DOMAIN}", "--quota", str(QUOTA)) == 0
        self.fill("full", full)
        self.fill("roomy", 10)
        assert self.quotagate("scan") == 0


def safe(local: str) -> str:
    """The folder name the test Exim's transport uses for a local part."""
    return "".join(c if c.isalnum() or c in ".+-" else "_" for c in local)


@pytest.fixture
def work() -> Iterator[Path]:
    # Exim reads the store and the published file as Debian-exim: every level must be traversable.
    path = Path(tempfile.mkdtemp(prefix="quotagate-exim-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def exim(work: Path) -> Iterator[Exim]:
    server = Exim(work / "exim", free_port(), work / "mail")
    yield server
    server.stop()
    untrust(server.config)


def make_site(work: Path, store_toml: str) -> Site:
    spool = work / "mail"
    spool.mkdir(exist_ok=True)
    config = work / "quotagate.toml"
    # A lock of its own: a server-backed store would otherwise share /run/quotagate/scan.lock
    # with every other test run on the machine.
    config.write_text(
        f'{store_toml}\n[spool]\nroot = "{spool}"\n\n[publish]\nfile = "{work}/overquota"\n'
        f'[scan]\nlock_file = "{work}/scan.lock"\n'
    )
    return Site(work, spool, config)


def john_doe_reaches_full_john(site: Site, exim: Exim, method: str, lookup: str) -> None:
    """Configure Exim from ``site``'s exim-config, delivering ``john-doe@`` to ``john``'s mailbox
    (as a ``local_part_suffix = -*`` router would, john-doe being no mailbox of its own), and
    check that both are refused as full."""
    parts = exim_config.parts(load_config(site.config), method, lookup)  # type: ignore[arg-type]
    users = {f"john@{DOMAIN}": f"{DOMAIN}/john", f"john-doe@{DOMAIN}": f"{DOMAIN}/john"}
    exim.configure(users=users, main=parts.main, acl=parts.acl, routers=parts.routers, acls=parts.acls)
    john, john_doe = exim.fake_session(f"john@{DOMAIN}", f"john-doe@{DOMAIN}")
    assert john[0] == "5", exim.last_session
    assert john_doe[0] == "5" and "Mailbox is full" in john_doe, exim.last_session
