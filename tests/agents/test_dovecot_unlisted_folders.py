"""Folders whose names on disk are not modified UTF-7 (RFC 3501), as a mail client writing the
mail store itself (mutt, pine, a migration script) leaves them: Dovecot 2.3 lists them under a
decoded name, but its quota looks for them under that name encoded again, and so never counts
them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quotagate.model import Limits
from tests.agents.conftest import Gate
from tests.servers.dovecot import Dovecot
from tests.servers.exim import MAIL_UID
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 3000
PROFILE = {"maildir": "dovecot", "count": "dovecot-count"}


def _owned(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(entry, MAIL_UID, MAIL_UID, follow_symlinks=False)


@pytest.mark.parametrize("backend", ["maildir", "count"])
@pytest.mark.parametrize("folder", [".Entwürfe", ".R&D", "fs:Entwürfe", "fs:R&D"])
def test_a_maildir_folder_dovecot_does_not_count_is_not_counted_against_its_quota(
    gate: Gate, dovecot: Dovecot, backend: str, folder: str
) -> None:
    """Scenario: Dovecot (``quota = maildir:`` or ``count:``, no grace, limit 3,000 bytes)
    delivers to ``~/Maildir``; the user's mutt (``mbox_type = Maildir``, ``folder = ~/Maildir``)
    saved 2,800 bytes into a folder it made itself: ``~/Maildir/.Entwürfe`` (UTF-8 on disk) or
    ``~/Maildir/.R&D`` (a bare ``&``); under ``LAYOUT=fs``, ``~/Maildir/Entwürfe`` or
    ``R&D``. Neither name is modified UTF-7, which Dovecot 2.3 keeps names in on disk: its
    quota (recalc, and every delivery) looks for the folder under the name encoded again and
    never counts it (maildirsize ``500 1``, ``doveadm quota get``: 1 message). INBOX holds 500.

    Expected: under the profile of that Dovecot quota, quotagate counts what Dovecot counts
    (500 bytes) and ``quotagate check --size 1000`` accepts, as ``dovecot-lda`` then delivers
    the message. Today quotagate counts the folder (3,300 bytes, over quota) and refuses at RCPT
    mail that Dovecot stores."""
    layout = "fs" if folder.startswith("fs:") else "maildir++"
    folder = folder.removeprefix("fs:")
    location = "maildir:~/Maildir:LAYOUT=fs" if layout == "fs" else "maildir:~/Maildir"
    dovecot.configure(backend=backend, limit_bytes=LIMIT, location=location, extra="  quota_grace = 0\n")
    md = dovecot.home("u") / "Maildir"
    assert dovecot.deliver("u", message(500))
    saved = md / folder
    for sub in ("cur", "new", "tmp"):
        (saved / sub).mkdir(parents=True, exist_ok=True)
    (saved / "cur" / "1700000001.M1P1.host,S=2800:2,S").write_bytes(message(2800))
    _owned(md)
    dovecot.recalc("u")
    assert dovecot.quota("u").messages == 1  # Dovecot's own count: INBOX's message alone
    if backend == "maildir":
        assert (md / "maildirsize").read_text().splitlines()[1:] == ["500 1"]

    gate.configure(PROFILE[backend], maildir_layout=layout)
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    quotagate_accepts = gate.accepts("u", 1000)
    dovecot_delivers = dovecot.deliver("u", message(1000))
    assert dovecot_delivers
    assert quotagate_accepts == dovecot_delivers, gate.output


@pytest.mark.parametrize("folder", ["Entwürfe", "R&D"])
def test_an_mbox_folder_dovecot_does_not_count_is_not_counted_against_its_quota(
    gate: Gate, dovecot: Dovecot, folder: str
) -> None:
    """Scenario: Dovecot with ``mail_location = mbox:~/mail:INBOX=~/mail/inbox`` and ``quota =
    count:`` (no grace, limit 3,000 bytes); INBOX holds 500 bytes. The user's mutt or pine
    (``folder = ~/mail``) saved about 2,900 bytes into the mbox file ``~/mail/Entwürfe`` (its
    name in UTF-8, as mutt writes it) or ``~/mail/R&D``: not modified UTF-7, so Dovecot's
    quota never counts it (``doveadm quota recalc``, ``quota get``: 1 message).

    Expected: quotagate's ``dovecot-count`` counts what Dovecot counts and ``quotagate check
    --size 1000`` accepts, as ``dovecot-lda`` then delivers. Today the file is counted (3,312
    bytes, over quota) and mail Dovecot stores is refused at RCPT."""
    dovecot.configure(
        backend="count", limit_bytes=LIMIT, location="mbox:~/mail:INBOX=~/mail/inbox", extra="  quota_grace = 0\n"
    )
    home = dovecot.home("u")
    own(home / "mail")
    assert dovecot.deliver("u", message(500))
    saved = home / "mail" / folder
    saved.write_bytes(b"From sender@example.net Wed Dec  2 10:16:14 2026\n" + message(2800) + b"\n")
    _owned(home)
    dovecot.recalc("u")
    assert dovecot.quota("u").messages == 1  # Dovecot's own count: INBOX's message alone

    gate.configure("dovecot-count", layout="{local}/mail")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    quotagate_accepts = gate.accepts("u", 1000)
    assert dovecot.deliver("u", message(1000))
    assert quotagate_accepts, gate.output
