"""A warning reaches a full mailbox through the port ``postfix-config --warn-port`` prints, and that
port lets nothing else past the check: not another address, not a relay.

The RCPT-time check the daemon answers refuses a full mailbox before any header is seen, so the
warning that says "your mailbox is full" needs an entry point without the check: a second smtpd on
loopback. The test runs real Postfix with main.cf and master.cf as printed, and ``quotagate warn``.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import private_postfix
from tests.servers.process import free_port

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
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
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
