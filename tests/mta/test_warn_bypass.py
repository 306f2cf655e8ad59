"""A warning reaches a full mailbox through the port ``postfix-config --warn-port`` and
``exim-config --warn-port`` open, and that port lets nothing else past the check: not another
address, not a relay.

The RCPT-time check refuses a full mailbox before any header is seen, so the warning that says
"your mailbox is full" needs an entry point without the check, on loopback. The tests run real
Postfix and real Exim with the configuration as printed, and ``quotagate warn``.
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from quotagate.mta import postfix as postfix_config
from tests.mta.conftest import DOMAIN, Site
from tests.mta.test_exim_policy import site_for
from tests.servers.daemon import policy_daemon
from tests.servers.exim import Exim, owned_by_mail_user
from tests.servers.postfix import private_postfix
from tests.servers.process import free_port
from tests.spoolgen import maildir_folder

QUOTA = 10_000
FULL = "full@example.org"


def rcpt(port: int, recipient: str, source: str = "127.0.0.1") -> int:
    with smtplib.SMTP(timeout=30, source_address=(source, 0)) as client:
        client.connect("127.0.0.1", port)
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250
        return client.rcpt(recipient)[0]


def test_the_warning_port_delivers_to_a_full_mailbox_and_nothing_else_gets_past(tmp_path: Path) -> None:
    port, warn_port = free_port(), free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\n'
    config.write_text(listen)
    item = postfix_config.restriction(load_config(config))
    with private_postfix(
        f"reject_unauth_destination, {item}, permit",
        mailboxes={FULL: "full"},
        main=f"smtpd_end_of_data_restrictions = {item}\n",
        master=postfix_config.warn_service(warn_port),
    ) as postfix:
        maildir = postfix.maildir(FULL)
        maildir_folder(maildir)
        (maildir / "cur" / f"1.M1.h,S={QUOTA + 1}:2,S").write_bytes(b"x" * (QUOTA + 1))
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n{listen}'
            f'[warn]\nsmtp = "127.0.0.1:{warn_port}"\nsender = "postmaster@example.org"\n'
        )
        q = ["--config", str(config)]
        assert main([*q, "mailbox", "add", FULL, "--quota", str(QUOTA), "--path", str(maildir)]) == 0
        owned_by_mail_user(postfix.maildirs)
        assert main([*q, "scan"]) == 0
        with policy_daemon(config, port):
            assert rcpt(postfix.port, FULL) == 552  # the way mail comes in: refused at RCPT
            assert rcpt(warn_port, FULL, source="127.0.0.2") == 554  # another address: not on this port
            assert rcpt(warn_port, "someone@example.net") == 554  # no relaying through it either
            assert main([*q, "warn"]) == 0
            delivered = postfix.delivered(FULL)
        assert len(delivered) == 1, postfix.log()[-3000:]
        text = delivered[0].read_bytes()
        assert b"X-Quotagate-Warning: 95%" in text
        assert b"It is full" in text


def test_exims_warning_port_delivers_to_a_full_mailbox_and_nothing_else_gets_past(work: Path, exim: Exim) -> None:
    spool, warn_port = work / "mail", free_port()
    config = work / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[warn]\nsmtp = "127.0.0.1:{warn_port}"\nsender = "postmaster@example.org"\n'
    )
    site = Site(work, spool, config)
    assert site.quotagate("mailbox", "add", FULL, "--quota", str(QUOTA)) == 0
    site.fill("full", QUOTA + 1)
    assert site.quotagate("scan") == 0
    for method in ("acl", "router"):
        parts = exim_config.parts(load_config(config), method, "sqlite", warn_port=warn_port)
        exim.configure(
            users={FULL: "example.org/full"},
            main=parts.main,
            acls=parts.acls,
            acl=parts.acl,
            routers=parts.routers,
            more_ports=(warn_port,),
        )
        exim.start()
        try:
            assert rcpt(exim.port, FULL) == 552, method  # the way mail comes in: refused at RCPT
            assert rcpt(warn_port, FULL, source="127.0.0.2") == 552, method  # another address: checked
            assert rcpt(warn_port, "nobody@example.org") == 550, method  # only recipients that exist
        finally:
            exim.stop()
    exim.start()
    assert site.quotagate("warn") == 0
    new = site.maildir("full") / "new"
    for _ in range(100):
        if new.is_dir() and any(new.iterdir()):
            break
        time.sleep(0.1)
    (delivered,) = new.iterdir()
    assert b"X-Quotagate-Warning: 95%" in delivered.read_bytes()


def test_the_warning_to_a_full_mailbox_gets_past_the_data_check_too(work: Path, exim: Exim) -> None:
    """The warn port skips the checks at DATA as well as the RCPT check (the ACL statement, the
    router's ACL): the daemon, asked at DATA, would say the mailbox is full and the warning would
    be refused with 552 after DATA."""
    site, port = site_for(work)
    warn_port = free_port()
    site.full_and_roomy()  # full@ holds QUOTA + 1 bytes: over quota
    parts = exim_config.parts(load_config(site.config), "policy", warn_port=warn_port)
    with site.config.open("a") as config:
        config.write(f'[warn]\nsmtp = "127.0.0.1:{warn_port}"\nsender = "postmaster@{DOMAIN}"\n')
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("full", "roomy")}
    exim.configure(users=users, main=parts.main, acls=parts.acls, acl=parts.acl, more_ports=(warn_port,))
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        assert exim.smtp(FULL) == 552  # the way mail comes in: refused at RCPT
        assert site.quotagate("warn") == 0, exim.log("main")[-3000:] + daemon.log()[-2000:]
    new = site.maildir("full") / "new"
    for _ in range(100):
        if new.is_dir() and any(new.iterdir()):
            break
        time.sleep(0.1)
    landed = sorted(new.iterdir()) if new.is_dir() else []
    assert len(landed) == 1, exim.log("main")[-3000:]
    assert b"X-Quotagate-Warning: 95%" in landed[0].read_bytes()
