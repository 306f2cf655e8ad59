"""Folder details (``roomy+Archive@``) through a real Postfix with ``postfix-config``'s items
(check_policy_service at RCPT and END-OF-MESSAGE), ``recipient_delimiter = +``, and
``roomy+archive@`` delivered by virtual(8) into roomy's ``.Archive`` (its own map entry).
roomy@ has 10 MB; Archive a limit of its own of 450 kB (4.5 messages of 100 kB)."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from quotagate.policy.control import ask
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port
from tests.spoolgen import maildir_folder

pytestmark = [pytest.mark.mta, pytest.mark.servers]

ROOMY = "roomy@example.org"
ARCHIVE = "roomy+Archive@example.org"
MAILBOX_QUOTA, FOLDER_QUOTA, MESSAGE = 10_000_000, 450_000, 100_000
BODY = b"Subject: folder\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MESSAGE // 1000)


@dataclass
class PostfixSite:
    postfix: Postfix
    daemon: PolicyDaemon
    work: Path

    def held(self) -> list[dict[str, Any]]:
        held: list[dict[str, Any]] = ask(self.work / "control.sock", {"op": "list", "address": ROOMY})["reservations"]
        return held

    def archive(self) -> Path:
        return self.postfix.maildir(ROOMY) / ".Archive"


@pytest.fixture
def postfix_folders(tmp_path: Path) -> Iterator[PostfixSite]:
    port = free_port()
    config = tmp_path / "quotagate.toml"
    policy = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n'
    config.write_text(policy)
    item = postfix_config.restriction(load_config(config))
    maps_dir = Path(tempfile.mkdtemp(prefix="quotagate-postfix-folders-", dir="/var/tmp"))
    maps_dir.chmod(0o755)
    maps = maps_dir / "vmailbox"
    maps.write_text(f"{ROOMY} roomy/Maildir/\nroomy+archive@example.org roomy/Maildir/.Archive/\n")
    maps.chmod(0o644)
    past = time.time() - 60
    os.utime(maps, (past, past))
    extra = (
        f"smtpd_end_of_data_restrictions = {item}\nrecipient_delimiter = +\nvirtual_mailbox_maps = texthash:{maps}\n"
    )
    with private_postfix(
        f"reject_unauth_destination, {item}, permit", mailboxes={ROOMY: "roomy"}, main=extra
    ) as postfix:
        maildir = postfix.maildir(ROOMY)
        maildir_folder(maildir)
        (maildir / "cur" / "1.M1.h,S=10:2,S").write_bytes(b"x" * 10)
        maildir_folder(maildir, "Archive")
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
            f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n'
            f'[[folders]]\nmatch = "Archive"\nquota = "{FOLDER_QUOTA}"\n'
            f"[watch]\nenabled = true\nflush_seconds = 0.1\n{policy}"
        )
        add = ["mailbox", "add", ROOMY, "--quota", str(MAILBOX_QUOTA), "--path", str(maildir)]
        assert main(["--config", str(config), *add]) == 0
        owned_by_mail_user(postfix.maildirs)
        assert main(["--config", str(config), "scan"]) == 0
        with policy_daemon(config, port) as daemon:
            yield PostfixSite(postfix, daemon, tmp_path)
    shutil.rmtree(maps_dir, ignore_errors=True)


def client(site: PostfixSite, n: int) -> smtplib.SMTP:
    smtp = smtplib.SMTP(timeout=60, source_address=(f"127.0.0.{20 + n}", 0))
    smtp.connect("127.0.0.1", site.postfix.port)
    smtp.ehlo("client.test")
    return smtp


def test_a_burst_to_a_folder_lets_in_only_the_messages_that_fit_the_folder(postfix_folders: PostfixSite) -> None:
    """Ten clients at once, each ``SIZE=100000`` to ``roomy+Archive@``: the folder has room for
    4.5 of them, the mailbox for a hundred. 4 accepted, 6 deferred (452) at RCPT, and 4 land in
    ``.Archive``."""
    site = postfix_folders
    sessions = [client(site, n) for n in range(10)]
    start = threading.Barrier(10)
    codes = [0] * 10

    def rcpt(n: int) -> None:
        assert sessions[n].mail("sender@example.net", [f"SIZE={MESSAGE}"])[0] == 250
        start.wait(timeout=30)
        codes[n] = sessions[n].rcpt(ARCHIVE)[0]

    threads = [threading.Thread(target=rcpt, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for smtp, code in zip(sessions, codes, strict=True):
        if code == 250:
            assert smtp.data(BODY)[0] == 250
        smtp.quit()
    assert sorted(codes) == [250] * 4 + [452] * 6, site.postfix.log()[-3000:]
    deadline = time.monotonic() + 20
    while len(list((site.archive() / "new").iterdir())) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list((site.archive() / "new").iterdir())) == 4, site.postfix.log()[-2500:]
