"""Mail without SIZE= through real Exim with the generated configuration: refused at DATA, per
recipient when the client speaks PRDR (another real Exim, swaks), else for the message when no
recipient has room, and accepted (the transport's own quota deciding) when only some have."""

from __future__ import annotations

import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from quotagate.policy.control import ask as ask_control
from tests.mta.conftest import DOMAIN, QUOTA, Site
from tests.mta.test_exim_policy import site_for
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import Exim, owned_by_mail_user, untrust
from tests.servers.install import require_command
from tests.servers.process import free_port

FULL, ROOMY = f"full@{DOMAIN}", f"roomy@{DOMAIN}"
NEARLY_FULL = QUOTA - 1000  # room for 1,000 bytes: the RCPT check without SIZE= lets mail in
SENDER = "sender@example.net"
# About 5 kB, no To: header: a bounce that quotes it names only the recipients that failed.
MESSAGE = b"Subject: without size\r\n\r\n" + (b"x" * 98 + b"\r\n") * 50
# Exim's own quota in the mailbox transport: what decides for a full recipient of a message
# accepted for the others (a client without PRDR).
TRANSPORT_QUOTA = f"quota = {QUOTA}\n"
SENDING_ROUTER = """\
receiver:
  driver = accept
  domains = example.org
  transport = to_receiver
"""
# A client that speaks PRDR, in plain SMTP. Exim always offers SIZE, and Exim 4.96 as a client
# always declares it when offered (message size + lines + size_addition, even when that is
# negative). A size_addition of -5000 makes it declare a few hundred bytes for this 5 kB
# message: past RCPT as a message without SIZE= would be, and caught at DATA.
SENDING_TRANSPORT = """\
to_receiver:
  driver = smtp
  hosts = 127.0.0.1
  port = {port}
  allow_localhost
  hosts_try_prdr = *
  hosts_avoid_tls = *
  hosts_try_chunking =
  size_addition = -5000
"""


# The "full" mailbox holds 9,000 of 10,000 bytes: a 5 kB message does not fit, it is not full.
NO_FIT = r"Message of \d+ bytes does not fit in this mailbox"


# A quoted local part may hold commas; the router's users file sends this one to full's Maildir.
QUOTED = f'"full,{ROOMY},x"@{DOMAIN}'


@pytest.fixture
def receiving(work: Path, exim: Exim) -> Iterator[tuple[Site, PolicyDaemon]]:
    """The receiving Exim with the generated configuration, and quotagate serve."""
    site, port = site_for(work)
    with site.config.open("a") as config:
        config.write(f'control_socket = "{work}/control.sock"\n')  # the last section is [policy]
    site.full_and_roomy(NEARLY_FULL)
    parts = exim_config.parts(load_config(site.config), "policy")
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("full", "roomy")}
    users[f"full,{ROOMY},x@{DOMAIN}"] = f"{DOMAIN}/full"  # QUOTED, as $local_part@$domain
    exim.configure(users=users, main=parts.main, acls=parts.acls, verified_acl=parts.acl, transport=TRANSPORT_QUOTA)
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield site, daemon


@pytest.fixture
def sending(work: Path, exim: Exim) -> Iterator[Exim]:
    """A second Exim, for example.net, that hands example.org's mail to the receiving one."""
    sender = Exim(work / "sender", free_port(), work / "sender-mail")
    sender.maildirs.mkdir()
    owned_by_mail_user(sender.maildirs)
    sender.configure(
        users={SENDER: "example.net/sender"},
        domains="example.net",
        routers=SENDING_ROUTER,
        transports=SENDING_TRANSPORT.format(port=exim.port),
    )
    yield sender
    untrust(sender.config)


def delivered(site: Site, local: str) -> list[Path]:
    new = site.maildir(local) / "new"
    return sorted(new.iterdir()) if new.exists() else []


def wait_for_files(folder: Path, seconds: float = 20) -> list[Path]:
    deadline = time.monotonic() + seconds
    while not (folder.is_dir() and any(folder.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(folder.iterdir()) if folder.is_dir() else []


def data_reply(exim: Exim, *rcpts: str) -> tuple[list[int], int, str]:
    """One SMTP transaction from Python (no PRDR, no SIZE=): the RCPT codes and the DATA reply."""
    with smtplib.SMTP("127.0.0.1", exim.port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail(SENDER)[0] == 250
        codes = [client.rcpt(r)[0] for r in rcpts]
        code, text = client.data(MESSAGE)
        return codes, code, text.decode(errors="replace")


def test_a_prdr_client_bounces_only_the_recipient_without_room(
    receiving: tuple[Site, PolicyDaemon], exim: Exim, sending: Exim
) -> None:
    site, daemon = receiving
    sending.submit(SENDER, FULL, ROOMY, message=MESSAGE)
    received = exim.log("main")
    assert re.search(rf"PRDR {FULL} 552 5\.2\.2 {NO_FIT}", received), received + daemon.log()
    assert "at DATA" in daemon.log() and f"refused {FULL}" in daemon.log()
    assert len(delivered(site, "roomy")) == 1  # delivered once
    assert delivered(site, "full") == []
    sent = sending.log("main")
    assert f"** {FULL}" in sent and f"=> {ROOMY}" in sent and f"** {ROOMY}" not in sent, sent
    # The bounce is a message of its own, delivered by a process Exim forks.
    bounces = wait_for_files(sending.maildirs / "example.net/sender/Maildir/new")
    assert len(bounces) == 1, sending.log("main")
    bounce = bounces[0].read_text(errors="replace")
    assert FULL in bounce and re.search(NO_FIT, bounce) and ROOMY not in bounce, bounce


def test_swaks_prdr_shows_one_answer_per_recipient(receiving: tuple[Site, PolicyDaemon], exim: Exim) -> None:
    site, _ = receiving
    swaks = require_command("swaks", "swaks")
    done = subprocess.run(
        # swaks declares no SIZE=
        [
            swaks,
            "--server",
            f"127.0.0.1:{exim.port}",
            "--from",
            SENDER,
            "--to",
            f"{FULL},{ROOMY}",
            "--prdr",
            "--body",
            "x" * 5000,
            "--helo",
            "client.test",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    answers = [line for line in out.splitlines() if line.startswith("<")]
    # After the data, one answer per recipient in RCPT order, then the one for the message.
    assert answers[-5:-1] == [
        "<-  353 PRDR content analysis beginning",
        answers[-4],
        f"<-  250 PRDR R=<{ROOMY}> acceptance",
        answers[-2],
    ], out + done.stderr
    assert re.fullmatch(rf"<\*\* 552 5\.2\.2 {NO_FIT}", answers[-4]), out
    assert answers[-2].endswith("message accepted for some recipients"), out
    assert len(delivered(site, "roomy")) == 1 and delivered(site, "full") == []


def test_a_single_recipient_message_without_size_that_does_not_fit_is_refused_at_data(
    receiving: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    site, _ = receiving
    codes, code, text = data_reply(exim, FULL)
    assert codes == [250]  # no SIZE=: nothing to judge at RCPT
    assert code == 552 and re.fullmatch(rf"5\.2\.2 {NO_FIT}", text), exim.log("main")
    assert delivered(site, "full") == [] and exim.queue_count() == 0
    assert data_reply(exim, ROOMY)[1] == 250
    (landed,) = delivered(site, "roomy")
    # Held in flight: the size the message has in the mailbox, Exim's Received header included.
    (held,) = ask_control(site.work / "control.sock", {"op": "list", "address": ROOMY})["reservations"]
    assert (held["state"], held["bytes"]) == ("in flight", landed.stat().st_size)


def test_without_prdr_a_message_is_refused_only_when_no_recipient_has_room(
    receiving: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    site, _ = receiving
    # Every recipient refused (the same full mailbox twice): the message is refused.
    code, text = data_reply(exim, FULL, FULL.upper())[1:]
    assert code == 552 and re.fullmatch(rf"5\.2\.2 {NO_FIT}", text), text
    # Some refused: one reply for the message, so it is accepted, and the mailbox transport's
    # own quota decides for the full one (Exim defers it: its quota is exceeded).
    assert data_reply(exim, FULL, ROOMY)[1] == 250
    assert len(delivered(site, "roomy")) == 1
    assert delivered(site, "full") == []
    assert "Mailbox quota exceeded" in exim.log("main") or "quota exceeded" in exim.log("main"), exim.log("main")


def test_a_quoted_recipient_never_has_another_mailbox_checked_at_data(
    receiving: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    """Exim's $recipients is a list separated by commas, and a quoted local part may hold some:
    split there, the check would weigh (and hold the message's room in) a mailbox that is no
    recipient. Split as addresses, the quoted local part is one recipient (no mailbox here: the
    daemon does not know it), and the message is accepted; its delivery agent's quota decides."""
    site, _ = receiving
    codes, code, _ = data_reply(exim, QUOTED)
    assert codes == [250] and code == 250
    assert ask_control(site.work / "control.sock", {"op": "list", "address": ROOMY})["reservations"] == []
    assert "could not be split" not in exim.log("main"), exim.log("main")


def test_a_daemon_that_cannot_be_asked_at_data_lets_mail_in_and_says_so(
    receiving: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    site, daemon = receiving
    daemon.stop()
    assert data_reply(exim, ROOMY, FULL)[1] == 250
    assert "quotagate: cannot ask the daemon at DATA: accepted" in exim.log("main")
    assert len(delivered(site, "roomy")) == 1


def test_refusals_for_now_defer_the_message(receiving: tuple[Site, PolicyDaemon], exim: Exim) -> None:
    site, daemon = receiving
    daemon.stop()
    with site.config.open("a") as config:
        config.write('on_full = "defer"\n')  # the last section is [policy]
    daemon.start()
    for recipients in ((FULL, FULL.upper()), (FULL,)):
        code, text = data_reply(exim, *recipients)[1:]
        assert code == 452 and re.fullmatch(rf"4\.2\.2 {NO_FIT}", text), text
    assert exim.queue_count() == 0


def test_exim_a_needlessly_quoted_local_part_does_not_escape_the_data_check(
    receiving: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    """``"full"@example.org`` is ``full@example.org`` (RFC 5321: the quotes change nothing). The
    message that does not fit is refused at DATA when sent to the second, and accepted when sent
    to the first: quotagate_data_check once skipped every message whose $recipients held a quote."""
    site, _ = receiving
    assert data_reply(exim, "full@example.org")[1] == 552
    codes, code, text = data_reply(exim, '"full"@example.org')
    assert codes == [250]
    assert code == 552 and re.fullmatch(rf"5\.2\.2 {NO_FIT}", text), exim.log("main")
    assert delivered(site, "full") == []
