"""mbox files written by procmail, formail and Dovecot's LDA, counted by quotagate under the
Dovecot profiles as Dovecot itself counts them (``doveadm mailbox status messages vsize``).

The hard cases are the writers' own: procmail leaves a message without its final newline, so
the next ``From_`` line follows without an empty line; Dovecot does not escape body ``From ``
lines and relies on ``Content-Length``; bodies hold ``From `` lines that are and are not dates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from quotagate.model import Limits
from tests.agents.conftest import Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import own
from tests.servers.procmail import Procmail

pytestmark = [pytest.mark.servers, pytest.mark.mta]

HEAD = b"From: sender@example.net\nSubject: %d\n"
BODIES = [
    b"no final newline",
    b"From here on a line of the body\n\nFrom me to you\n",
    b"a date line after an empty one:\n\nFrom someone@example.net Wed Dec  2 10:16:14 2026\nand on",
    b"Status: RO is body text here\nX-UID: 7\n",
    b"last one, no final newline either",
]


def _messages() -> list[bytes]:
    return [HEAD % i + b"\n" + body for i, body in enumerate(BODIES)]


def _by_procmail(procmail: Procmail, dovecot: Dovecot, inbox: Path) -> None:
    del dovecot
    for data in _messages():
        procmail.deliver(inbox, data)


def _by_formail(procmail: Procmail, dovecot: Dovecot, inbox: Path) -> None:
    del dovecot
    written = b"".join(procmail.formail(data) for data in _messages())
    inbox.write_bytes(written)
    os.chown(inbox, 5000, 5000)


def _by_dovecot(procmail: Procmail, dovecot: Dovecot, inbox: Path) -> None:
    del procmail
    for data in _messages():
        assert dovecot.deliver(inbox.parent.name, data)


WRITERS: dict[str, Callable[[Procmail, Dovecot, Path], None]] = {
    "procmail": _by_procmail,
    "formail": _by_formail,
    "dovecot-lda": _by_dovecot,
}


@pytest.mark.parametrize("writer", WRITERS)
def test_mbox_counted_as_dovecot_counts_it(gate: Gate, dovecot: Dovecot, procmail: Procmail, writer: str) -> None:
    dovecot.configure(backend="count", limit_bytes=10**9, location="mbox:~/mail:INBOX=~/inbox")
    home = dovecot.home("u")
    own(home / "mail")
    inbox = home / "inbox"
    WRITERS[writer](procmail, dovecot, inbox)
    gate.add("u", Limits(10**9, 0))
    gate.configure("dovecot", layout="{local}/inbox")
    for _ in range(2):  # as written, then as Dovecot rewrote it while reading it
        size = inbox.stat().st_size
        gate.scan()
        by_file = gate.counted("u")
        gate.configure("dovecot-count", layout="{local}/inbox")
        gate.scan()
        by_vsize = gate.counted("u")
        gate.configure("dovecot", layout="{local}/inbox")
        messages, vsize = dovecot.status("u", "INBOX")
        assert messages == len(BODIES)
        assert by_file == (size, messages)
        assert by_vsize == (vsize, messages)
