"""Through Postfix: a copy of a message refused at END-OF-MESSAGE only because its client holds
its share of the mailbox (``client_hold``), delivered all the same (one answer for the message),
still holds its room in flight: held nowhere, the daemon under-counted the mailbox and let in mail
that did not fit."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port
from tests.servers.smtp_clients import body
from tests.servers.smtp_raw import held, offer
from tests.spoolgen import maildir_folder

ROOMY = "roomy@example.org"
LIMIT = 1_000_000  # client_hold: 10% (the default), 100,000 bytes
MESSAGE = b"Subject: two details\r\n\r\n" + (b"x" * 998 + b"\r\n") * 60  # ~60 kB: one copy fits the share, two do not


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Postfix, PolicyDaemon, Path]]:
    """roomy@ (1,000,000 bytes) behind a private Postfix with postfix-config's items (RCPT and
    end of data) and ``recipient_delimiter = +``: roomy+a@ and roomy+b@ land in roomy's Maildir."""
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n'
    config.write_text(listen)
    item = postfix_config.restriction(load_config(config))
    extra = f"smtpd_end_of_data_restrictions = {item}\nrecipient_delimiter = +\n"
    with private_postfix(
        f"reject_unauth_destination, {item}, permit", mailboxes={ROOMY: "roomy"}, main=extra
    ) as postfix:
        maildir = postfix.maildir(ROOMY)
        maildir_folder(maildir)
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
            f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n{listen}'
        )
        add = ["mailbox", "add", ROOMY, "--quota", str(LIMIT), "--path", str(maildir)]
        assert main(["--config", str(config), *add]) == 0
        owned_by_mail_user(postfix.maildirs)
        assert main(["--config", str(config), "scan"]) == 0
        with policy_daemon(config, port) as daemon:
            yield postfix, daemon, tmp_path / "control.sock"


def landed(postfix: Postfix, count: int, seconds: float = 20) -> list[int]:
    new = postfix.maildir(ROOMY) / "new"
    deadline = time.monotonic() + seconds
    sizes: list[int] = []
    while time.monotonic() < deadline:
        sizes = sorted(f.stat().st_size for f in new.iterdir()) if new.is_dir() else []
        if len(sizes) >= count:
            break
        time.sleep(0.1)
    return sizes


def test_a_copy_capped_at_end_of_message_and_delivered_holds_its_room_in_flight(
    site: tuple[Postfix, PolicyDaemon, Path],
) -> None:
    """Scenario: one client, no SIZE=, sends one ~60 kB message to ``roomy+a@`` and ``roomy+b@``
    (two details of one mailbox; Postfix delivers both into roomy's Maildir). At END-OF-MESSAGE
    the daemon holds 60 kB for the first copy; the second would take the client past its
    100 kB share: deferred, holding nothing, yet the message is accepted (not every recipient
    is refused) and both copies land. Then another client declares a message that fits only
    if the second copy never landed.

    Expected: both copies in flight, so the second client is not let in (the mailbox would go
    past its quota: a late bounce or an over-full mailbox).

    Before the fix: one copy in flight; the second client gets 250 and the mailbox ends over its quota."""
    postfix, daemon, control = site
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60, source_address=("127.0.0.51", 0)) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250
        assert client.rcpt("roomy+a@example.org")[0] == 250
        assert client.rcpt("roomy+b@example.org")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    copies = landed(postfix, 2)
    assert len(copies) == 2, postfix.log()[-3000:]  # Postfix delivered both details
    in_flight = sum(r["bytes"] for r in held(control, ROOMY) if r["state"] == "in flight")

    # Fits beside one copy (60 kB: 1,000,000 - 60,024 >= 910,018), not beside the two that landed.
    big = body(910_000)
    rcpt, data = offer(postfix.port, "127.0.0.52", ROOMY, big)
    total = sum(landed(postfix, 3))
    assert rcpt[0] != 250, (
        f"two copies landed ({copies}), {in_flight} bytes in flight; another client's SIZE={len(big)} "
        f"got {rcpt} at RCPT and {data} at DATA; the mailbox now holds {total} bytes of its {LIMIT}\n"
        f"{daemon.log()[-1500:]}"
    )
