"""A copy of a message refused at DATA only because its client holds its share of the mailbox
(``client_hold``), delivered all the same (no PRDR: one answer for the message), still holds its
room in flight: held nowhere, the daemon under-counted the mailbox and let in mail that did not fit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, Site
from tests.mta.test_exim_policy import site_for
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import Exim
from tests.servers.smtp_clients import body
from tests.servers.smtp_raw import Raw, held, offer

ROOMY = f"roomy@{DOMAIN}"
LIMIT = 100_000  # client_hold: 10% (the default), 10,000 bytes
# About 6 kB in the mailbox: one copy fits the client's share, two do not.
MESSAGE = b"Subject: two spellings\r\n\r\n" + (b"x" * 98 + b"\r\n") * 60


@pytest.fixture
def receiving(work: Path, exim: Exim) -> Iterator[tuple[Site, PolicyDaemon]]:
    """roomy@ (100,000 bytes, 10 used) behind Exim with the generated policy configuration; the
    mailbox transport enforces the same quota (as an admin's appendfile ``quota`` does)."""
    site, port = site_for(work)
    with site.config.open("a") as config:
        config.write(f'control_socket = "{work}/control.sock"\n')  # the last section is [policy]
    assert site.quotagate("mailbox", "add", ROOMY, "--quota", str(LIMIT)) == 0
    site.fill("roomy", 10)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(site.config), "policy")
    exim.configure(
        users={ROOMY: f"{DOMAIN}/roomy"},
        main=parts.main,
        acls=parts.acls,
        verified_acl=parts.acl,
        transport=f"quota = {LIMIT}\n",
    )
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield site, daemon


def landed(site: Site, count: int, seconds: float = 20) -> list[int]:
    new = site.maildir("roomy") / "new"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sizes = sorted(f.stat().st_size for f in new.iterdir()) if new.is_dir() else []
        if len(sizes) >= count:
            return sizes
        time.sleep(0.1)
    return sizes


def test_a_copy_capped_at_data_and_delivered_holds_its_room_in_flight(
    receiving: tuple[Site, PolicyDaemon], exim: Exim, work: Path
) -> None:
    """Scenario: one client, no SIZE= and no PRDR (a plain smtplib or Outlook-like client), sends
    one ~6 kB message to ``Roomy@example.org`` and ``roomy@example.org`` (To: and Cc: spelled
    differently). Exim delivers each spelling apart: two copies land in roomy's Maildir. At DATA
    the daemon holds 6 kB for the first copy; the second would take the client past its 10 kB
    share, so it is deferred ("the client holds its share") and holds nothing, yet the message
    is accepted for the first and Exim delivers both. Then another client declares a message
    that fits only if the second copy never landed.

    Expected: the room in flight covers both copies (the README: a recipient refused at DATA whose
    copy still goes holds its room in flight when its delivery agent will let it in), so the
    second client is not let in at RCPT (it would go over the quota and bounce from the queue).

    Before the fix: one copy in flight (6,146 bytes for 12,292 landed); the second client gets 250 at
    RCPT and DATA, and its message then sits in Exim's queue: the mailbox transport's quota is
    exceeded (a late bounce, what quotagate exists to prevent)."""
    site, daemon = receiving
    control = work / "control.sock"
    with Raw(exim.port, "127.0.0.41") as client:
        assert client.cmd("EHLO client.test")[0] == 250
        assert client.cmd("MAIL FROM:<sender@example.net>")[0] == 250
        assert client.cmd(f"RCPT TO:<Roomy@{DOMAIN}>")[0] == 250
        assert client.cmd(f"RCPT TO:<roomy@{DOMAIN}>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        assert client.cmd(MESSAGE + b".")[0] == 250
        assert client.cmd("QUIT")[0] == 221
    copies = landed(site, 2)
    assert len(copies) == 2, exim.log("main")  # Exim delivered both spellings
    in_flight = sum(r["bytes"] for r in held(control, ROOMY) if r["state"] == "in flight")

    # Fits beside one copy (10 + 6,146 + 90,018 <= 100,000), not beside the two that landed
    # (10 + 12,292 + 90,018 > 100,000).
    big = body(90_000)
    rcpt, data = offer(exim.port, "127.0.0.42", ROOMY, big)
    time.sleep(2)
    assert rcpt[0] != 250, (
        f"two copies landed ({copies}), {in_flight} bytes in flight; another client's "
        f"SIZE={len(big)} got {rcpt} at RCPT and {data} at DATA; Exim queue now holds "
        f"{exim.queue_count()} message(s)\n{daemon.log()[-1500:]}\n{exim.log('main')[-2500:]}"
    )
