"""A message's own delivery, seen with its size, releases the room held for it: against the real
Postfix (its END-OF-MESSAGE ``size``, asked by a recording policy server at end of data, and the
message its virtual(8) stores, with the headers Postfix adds), and the names the real Dovecot LDA
and Courier deliverquota give that message (``S=``, which watch hands to
:meth:`Reservations.delivered`). Postfix's size counts CRLF line ends, the stored file LF ones."""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotagate.accounting import PROFILES
from quotagate.policy.reservations import Reservations, Transaction, delivery_most
from tests.servers.courier import Courier
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import own
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port

pytestmark = pytest.mark.servers

BOX = "user@example.org"
BIG = 10**12

# A nightly report as monitoring and accounting systems mail it: a 7bit text/csv part, one short
# row per line (id, count). 6,000 rows, about 54 kB in the mailbox.
REPORT = (
    b"From: monitor@example.net\r\nSubject: nightly counts\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/csv; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    + b"".join(b"%05d,%d\r\n" % (i, i % 97) for i in range(6000))
)


class Recorder:
    """A Postfix policy server that answers DUNNO and keeps every request's attributes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = free_port()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        attrs: dict[str, str] = {}
        with conn, conn.makefile("rb") as lines:
            for raw in lines:
                line = raw.rstrip(b"\n").decode(errors="replace")
                if not line:
                    self.requests.append(attrs)
                    attrs = {}
                    conn.sendall(b"action=DUNNO\n\n")
                    continue
                key, _, value = line.partition("=")
                attrs[key] = value

    def end_of_message_sizes(self) -> list[int]:
        return [int(a["size"]) for a in self.requests if a.get("protocol_state") == "END-OF-MESSAGE"]


@pytest.fixture(scope="module")
def postfix() -> Iterator[tuple[Postfix, Recorder]]:
    recorder = Recorder()
    item = f"check_policy_service inet:127.0.0.1:{recorder.port}"
    with private_postfix(
        f"reject_unauth_destination, {item}, permit",
        mailboxes={BOX: "user"},
        main=f"smtpd_end_of_data_restrictions = {item}\n",
    ) as server:
        yield server, recorder
    recorder.sock.close()


def through_postfix(postfix: tuple[Postfix, Recorder], body: bytes) -> tuple[int, bytes]:
    """Send ``body`` through the real Postfix: its END-OF-MESSAGE ``size`` (what the daemon
    holds) and the message as stored for the mailbox (LF line ends, headers added)."""
    server, recorder = postfix
    new = server.maildir(BOX) / "new"
    before = set(new.iterdir()) if new.is_dir() else set()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("sender@example.net")
        assert client.rcpt(BOX)[0] == 250
        client.data(body)
    deadline = time.monotonic() + 20
    while True:
        landed = (set(new.iterdir()) if new.is_dir() else set()) - before
        if landed or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert landed, f"Postfix did not deliver:\n{server.log()}"
    (path,) = landed
    (size,) = recorder.end_of_message_sizes()[-1:]
    return size, path.read_bytes()


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="quotagate-sizes-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def lda_name(message: bytes) -> str:
    """The name Dovecot's LDA gives ``message`` in new/ (quota = maildir:, as the dovecot profile)."""
    with scratch() as work:
        dovecot = Dovecot(work)
        dovecot.configure(backend="maildir", limit_bytes=10**9)
        assert dovecot.deliver("u", message)
        (name,) = [p.name for p in (dovecot.home("u") / "Maildir" / "new").iterdir()]
        return name


def deliverquota_name(message: bytes) -> str:
    """The name Courier's deliverquota gives ``message`` in new/."""
    with scratch() as work:
        courier = Courier()
        maildir = work / "Maildir"
        own(work)
        courier.make(maildir, "1000000000S")
        assert courier.deliver(maildir, message)
        (name,) = [p.name for p in (maildir / "new").iterdir()]
        return name


def matched(held: int, delivered: int | None) -> bool:
    """Whether a delivery of ``delivered`` bytes (as the watch reads it from the name) releases
    the one message in flight to the mailbox, held at ``held`` bytes (Postfix's size)."""
    r = Reservations(seconds=600)
    t = Transaction("192.0.2.1", "postfix-1")
    assert r.hold(t, BOX, held, 0, cap_bytes=BIG, cap_messages=BIG)
    r.end(t, with_data=True, now=1, size=held)
    return r.delivered(BOX, now=10, size=delivered)


@pytest.mark.parametrize(
    ("agent", "profile"),
    [(lda_name, "dovecot"), (deliverquota_name, "courier")],
    ids=["dovecot-lda", "courier-deliverquota"],
)
def test_a_report_of_short_lines_releases_its_own_room_when_it_lands(
    postfix: tuple[Postfix, Recorder], agent: Callable[[bytes], str], profile: str
) -> None:
    """Scenario: a 7bit CSV report of 6,000 short rows comes in through Postfix; quotagate holds
    its END-OF-MESSAGE size; the mailbox's delivery agent (Dovecot's LDA, Courier's
    deliverquota) stores it and the watch reads its size from the name (S=).
    Expected: that delivery, the message's own and the only one in flight, releases its room.
    Held 59,528 (CRLF, as Postfix counts), landed S=53,888 (LF, with the Return-Path,
    X-Original-To, Delivered-To and Received headers Postfix added): a delivery was first
    matched only to room at most 5% and 1 KiB over its size, and this room stayed held for
    reservation_seconds. (Dovecot's W= for the same file is 59,902.)"""
    held, stored = through_postfix(postfix, REPORT)
    name = agent(stored)
    landed = PROFILES[profile].size_from_name(name)
    assert landed is not None, name
    most = delivery_most(landed)
    assert matched(held, landed), (
        f"held {held} (Postfix END-OF-MESSAGE size), landed {landed} ({name}); "
        f"a delivery of {landed} releases at most {most}"
    )
