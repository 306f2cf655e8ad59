"""Dovecot's mbox folders named as parts of a Maildir, at the top of the mbox home: folders cur
and new (Dovecot keeps them as the mbox files ``~/mail/cur`` and ``~/mail/new``, and their
indexes as the directories ``~/mail/.imap/cur`` and ``.imap/new``), and a folder hierarchy named
Maildir (``Maildir/old``, a file below a directory ``Maildir``, which ``maildir_subdir`` names).
Judged against real Dovecot: its quota refuses the next message, and quotagate's ``check``
must not let it in (before the fixes, the home was an empty Maildir, or ``.imap``'s index
files were counted as its messages)."""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import ACCEPT, Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]


@pytest.mark.parametrize("folders", [("cur", "new"), ("Maildir/old",)], ids=["cur and new", "Maildir/old"])
def test_check_refuses_what_dovecot_refuses(gate: Gate, dovecot: Dovecot, folders: tuple[str, ...]) -> None:
    dovecot.configure(
        backend="count", limit_bytes=10_000, location="mbox:~/mail:INBOX=~/mail/inbox", extra="  quota_grace = 0\n"
    )
    home = dovecot.reset("u")
    own(home / "mail")
    for _ in range(3 - len(folders)):
        assert dovecot.deliver("u", message(3000, 5))
    for folder in folders:
        assert dovecot.deliver("u", message(3000, 5), folder)
    assert all((home / "mail" / folder).is_file() for folder in folders)

    gate.configure("dovecot-count", layout="{local}/mail", grace="0")
    address = gate.add("u", Limits(10_000))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    accepted = gate.run("check", address, "--size", "1500") == ACCEPT
    assert not dovecot.deliver("u", message(1500, 5))  # Dovecot: no room
    assert not accepted, (reading.usage.format, reading.bytes, reading.messages, reading.path, gate.output)
