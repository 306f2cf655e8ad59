"""Folder details (``roomy+Archive@``) through a real Exim with ``exim-config --method policy``.

The site: roomy@ has 10 MB (plenty); its folder Archive has a limit of its own (``[[folders]]
match = "Archive"``, 450 kB: room for 4.5 messages of 100 kB). The admin's router delivers
``roomy+Archive@`` into ``.Archive`` (``local_part_suffix = +*``), as sent; Exim's ACLs see the
local part in lower case.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from quotagate.policy.control import ask as ask_control
from tests.mta.conftest import DOMAIN, Site
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import MAIL_UID, Exim, owned_by_mail_user
from tests.servers.process import free_port

pytestmark = [pytest.mark.mta, pytest.mark.servers]

ROOMY = f"roomy@{DOMAIN}"
MAILBOX_QUOTA = 10_000_000  # plenty
FOLDER_QUOTA = 450_000  # room for 4.5 messages of 100 kB
MESSAGE = 100_000

# local+Folder@ delivered into the Maildir++ folder .Folder (the folders file names it, so the
# path is untainted), as an admin's ``local_part_suffix = +*`` router does.
FOLDER_ROUTER = """\
folders:
  driver = accept
  domains = +local_domains
  local_part_suffix = +*
  address_data = ${{lookup{{${{lc:$local_part$local_part_suffix@$domain}}}}lsearch{{{folders}}}{{$value}}fail}}
  transport = folder_delivery
"""
FOLDER_TRANSPORT = """\
folder_delivery:
  driver = appendfile
  directory = {maildirs}/$address_data
  maildir_format
  maildir_tag = ,S=$message_size
  create_directory
  user = {uid}
  group = {uid}
  mode = 0644
"""


@dataclass
class FolderSite:
    site: Site
    daemon: PolicyDaemon
    exim: Exim
    folder: str = "Archive"

    @property
    def control(self) -> Path:
        return self.site.work / "control.sock"

    def held(self) -> list[dict[str, Any]]:
        held: list[dict[str, Any]] = ask_control(self.control, {"op": "list", "address": ROOMY})["reservations"]
        return held

    def in_folder(self) -> list[Path]:
        new = self.site.maildir("roomy") / f".{self.folder}" / "new"
        return sorted(new.iterdir()) if new.exists() else []

    def wait_for_folder(self, count: int, seconds: float = 20) -> list[Path]:
        deadline = time.monotonic() + seconds
        while len(self.in_folder()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.in_folder()


def folder_site(
    work: Path,
    exim: Exim,
    extra_policy: str = "",
    folder_quota: int = FOLDER_QUOTA,
    folder: str = "Archive",
) -> tuple[Site, int]:
    spool = work / "mail"
    spool.mkdir(exist_ok=True)
    (work / "db").mkdir(exist_ok=True)
    port = free_port()
    config = work / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/db/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[scan]\nlock_file = "{work}/scan.lock"\n'
        f'[[folders]]\nmatch = "{folder}"\nquota = "{folder_quota}"\n'
        "[watch]\nenabled = true\nflush_seconds = 0.1\n"
        f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{work}/control.sock"\n'
        f"{extra_policy}"
    )
    site = Site(work, spool, config)
    assert site.quotagate("mailbox", "add", ROOMY, "--quota", str(MAILBOX_QUOTA)) == 0
    site.fill("roomy", 10)
    archive = site.maildir("roomy") / f".{folder}"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True, exist_ok=True)
    (archive / "maildirfolder").touch()
    owned_by_mail_user(spool)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(config), "policy")
    folders = work / "folders"
    folders.write_text(f"roomy+{folder.lower()}@{DOMAIN}: {DOMAIN}/roomy/Maildir/.{folder}\n")
    exim.configure(
        users={ROOMY: f"{DOMAIN}/roomy"},
        main=parts.main,
        acls=parts.acls,
        acl=parts.acl,
        routers=FOLDER_ROUTER.format(folders=folders),
        transports=FOLDER_TRANSPORT.format(maildirs=exim.maildirs, uid=MAIL_UID),
    )
    return site, port


@pytest.fixture
def exim_folders(work: Path, exim: Exim) -> Iterator[FolderSite]:
    site, port = folder_site(work, exim)
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield FolderSite(site, daemon, exim)


class Client:
    """One SMTP client from a loopback address of its own (a client of its own for the daemon)."""

    def __init__(self, port: int, n: int) -> None:
        self.smtp = smtplib.SMTP(timeout=60, source_address=(f"127.0.0.{10 + n}", 0))
        self.smtp.connect("127.0.0.1", port)
        self.smtp.ehlo("client.test")

    def mail(self, size: int | None = MESSAGE) -> None:
        options = [f"SIZE={size}"] if size else []
        code, text = self.smtp.mail("sender@example.net", options)
        assert code == 250, text

    def rcpt(self, rcpt: str) -> int:
        return self.smtp.rcpt(rcpt)[0]

    def data(self, size: int = MESSAGE) -> int:
        body = b"Subject: folder\r\n\r\n" + (b"x" * 998 + b"\r\n") * (size // 1000)
        return self.smtp.data(body)[0]

    def quit(self) -> None:
        self.smtp.quit()


ARCHIVE = f"roomy+Archive@{DOMAIN}"
BURST = 10


def test_exim_a_burst_to_a_folder_lets_in_only_the_messages_that_fit_the_folder(exim_folders: FolderSite) -> None:
    """Ten clients at once, each ``SIZE=100000`` to ``roomy+Archive@``, every RCPT first, then
    DATA from those let in. The folder has room for 4.5 of them, the mailbox for a hundred.
    Exim asks about ``$local_part``, in lower case (``roomy+archive``): the folder is found in
    any case all the same. 4 accepted (250) and 6 deferred (452) at RCPT, and the folder holds
    at most its limit afterwards."""
    s = exim_folders
    clients = [Client(s.exim.port, n) for n in range(BURST)]
    start = threading.Barrier(BURST)
    codes = [0] * BURST

    def one(n: int) -> None:
        clients[n].mail(MESSAGE)
        start.wait(timeout=30)
        codes[n] = clients[n].rcpt(ARCHIVE)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    held = s.held()
    for client, code in zip(clients, codes, strict=True):
        if code == 250:
            assert client.data(MESSAGE) == 250
        client.quit()
    landed = s.wait_for_folder(codes.count(250))
    assert sorted(codes) == [250] * 4 + [452] * 6, (
        f"RCPT codes {sorted(codes)}; held at RCPT: {[(r['copy'], r['folder'], r['bytes']) for r in held]}"
    )
    assert sum(f.stat().st_size for f in landed) <= FOLDER_QUOTA


def test_exim_a_full_folder_is_refused_at_rcpt(exim_folders: FolderSite) -> None:
    """Archive already holds 460 kB, over its own 450 kB limit; the mailbox (10 MB) is far from
    full. ``RCPT TO:<roomy+Archive@>`` with ``SIZE=1000`` through Exim: 552 (the folder is
    full), as the daemon answers for that recipient when asked directly (``quotagate check``)."""
    s = exim_folders
    archive = s.site.maildir("roomy") / ".Archive" / "cur"
    (archive / "1700000000.M2P2.test,S=460000:2,S").write_bytes(b"x" * 460_000)
    owned_by_mail_user(s.site.spool)
    assert s.site.quotagate("scan", "--full") == 0
    s.daemon.reload()
    time.sleep(1.5)  # the reload is read on the daemon's loop
    assert s.site.quotagate("check", ARCHIVE, "--size", "1000") == 1  # the daemon's own answer: refused
    client = Client(s.exim.port, 1)
    client.mail(1000)
    code = client.rcpt(ARCHIVE)
    if code == 250:
        client.data(1000)
    client.quit()
    assert code == 552, f"RCPT to a full folder answered {code}; landed in .Archive: {len(s.wait_for_folder(1))}"
