"""Dovecot's own layouts, written by Dovecot's LDA, read by quotagate as admins point it at them.

Each test has Dovecot deliver the mail and says what Dovecot itself counts (``doveadm mailbox
status``); quotagate must then count the same, or call the mailbox unknown: never "known" with
less than Dovecot enforces.
"""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import ACCEPT, Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 10_000


@pytest.mark.parametrize("kind", ["sdbox", "mdbox"])
def test_a_dbox_whose_inbox_dovecot_has_not_made_yet_is_unknown_not_empty(
    gate: Gate, dovecot: Dovecot, kind: str
) -> None:
    """Mail filed by Dovecot's LDA into a folder (``-m Sent``, as a Sieve ``fileinto`` does)
    before anything reached INBOX: Dovecot makes ``mailboxes/Sent/dbox-Mails`` but no
    ``mailboxes/INBOX``, and an mdbox has only ``storage/dovecot.map.index.log``, no
    ``dovecot.map.index``. Looking for those two markers only, quotagate read the tree as an mbox
    home whose one folder was Dovecot's empty ``dovecot-uidvalidity.XXXXXXXX``: known, 0 bytes,
    while Dovecot holds 9,000 and refuses 1,500 more (a late bounce). Now unknown. Dovecot
    makes ``mailboxes/INBOX`` only once it opens INBOX (its first
    delivery there, a quota recalculation), so a mailbox whose mail Sieve files away stays so."""
    dovecot.configure(backend="count", limit_bytes=LIMIT, location=f"{kind}:~/mail", extra="  quota_grace = 0\n")
    for _ in range(3):
        assert dovecot.deliver("u", message(3000, 5), "Sent")
    gate.configure("dovecot", layout="{local}/mail")
    address = gate.add("u", Limits(LIMIT))
    gate.run("scan", "--full")
    usage = gate.store.readings()[address].usage
    accepted = gate.run("check", address, "--size", "1500") == ACCEPT
    # Dovecot, asked now, refuses it (its quota check then creates mailboxes/INBOX as well).
    assert not dovecot.deliver("u", message(1500, 5), "Sent")
    assert not usage.known and "dbox" in (usage.error or ""), usage
    assert not accepted


@pytest.mark.parametrize("location", ["sdbox:~/dbox", "mdbox:~/mdbox", "maildir:~/mail:LAYOUT=index"])
def test_dovecot_mail_below_the_home_is_unknown_not_empty(gate: Gate, dovecot: Dovecot, location: str) -> None:
    """``mail_location = sdbox:~/dbox`` (``mdbox:~/mdbox``, ``maildir:~/mail:LAYOUT=index``)
    with ``[spool] layout`` naming the home, as for a Maildir in ``maildir_subdir``: the dbox
    markers (and the GUID directories of ``LAYOUT=index``) were looked for at the home only, and
    the empty ``dovecot-uidvalidity.XXXXXXXX`` Dovecot keeps in its mail directory was an "mbox
    folder": known, 0 bytes, for a mailbox Dovecot counts full. Now unknown."""
    dovecot.configure(backend="count", limit_bytes=LIMIT, location=location, extra="  quota_grace = 0\n")
    for _ in range(3):
        assert dovecot.deliver("u", message(3000, 5))
    assert not dovecot.deliver("u", message(1500, 5))  # Dovecot: full
    gate.configure("dovecot-count", layout="{local}")
    address = gate.add("u", Limits(LIMIT))
    gate.run("scan", "--full")
    usage = gate.store.readings()[address].usage
    assert not usage.known, usage
    assert gate.run("check", address, "--size", "1500") != ACCEPT, gate.output


@pytest.mark.parametrize(
    ("location", "layout", "profile"),
    [
        ("maildir:~/Maildir:INBOX=~/Maildir/.INBOX", "maildir++", "dovecot-count"),
        ("maildir:~/Maildir:LAYOUT=fs:INBOX=~/Maildir/INBOX", "fs", "dovecot-count"),
        ("maildir:~/Maildir:LAYOUT=fs:INBOX=~/Maildir/INBOX", "fs", "files"),
    ],
)
def test_an_inbox_kept_in_a_folder_directory_counts_its_mail(
    gate: Gate, dovecot: Dovecot, location: str, layout: str, profile: str
) -> None:
    """Dovecot keeps INBOX where ``INBOX=`` says: ``Maildir/.INBOX`` (Maildir++) or
    ``Maildir/INBOX`` (``LAYOUT=fs``), with no cur/ or new/ at the root. Listed as a folder
    named "INBOX", the same name as the root's, both were opened as the root: INBOX's mail was
    never read, and a full mailbox took mail. Which one Dovecot uses cannot be told: unknown."""
    dovecot.configure(backend="count", limit_bytes=LIMIT, location=location, extra="  quota_grace = 0\n")
    for folder in ["INBOX", "INBOX", "Sent"]:
        assert dovecot.deliver("u", message(3000, 5), folder)
    assert not dovecot.deliver("u", message(1500, 5))  # Dovecot: full
    messages, _vsize = dovecot.status("u")
    assert messages == 3
    gate.configure(profile, maildir_layout=layout)
    address = gate.add("u", Limits(LIMIT))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    if reading.usage.known:
        assert reading.messages == 3, reading.usage.folders
    assert gate.run("check", address, "--size", "1500") != ACCEPT, gate.output


@pytest.mark.parametrize("folders", [("INBOX",), ("INBOX", "Sent")])
def test_an_inbox_in_a_plain_directory_of_a_maildirpp_root_is_counted_or_unknown(
    gate: Gate, dovecot: Dovecot, folders: tuple[str, ...]
) -> None:
    """``mail_location = maildir:~/Maildir:INBOX=~/Maildir/INBOX-dir`` (Maildir++ folders, INBOX
    in a directory of its own): the root has no cur/ or new/. With only INBOX, the root was read
    as an mbox home whose one "mbox file" is Dovecot's empty ``dovecot-uidvalidity.XXXXXXXX``:
    known, 0 bytes. With a ``.Sent`` too, it was a Maildir whose INBOX-dir is "not counted
    (Dovecot LAYOUT=fs folders?)": known, with Sent's mail only. Either way a full mailbox took
    mail Dovecot then refused; now it is unknown."""
    dovecot.configure(
        backend="count",
        limit_bytes=LIMIT,
        location="maildir:~/Maildir:INBOX=~/Maildir/INBOX-dir",
        extra="  quota_grace = 0\n",
    )
    for folder in ("INBOX", "INBOX", *folders[1:]):
        assert dovecot.deliver("u", message(3000, 5), folder)
    held = len(folders) + 1
    gate.configure("dovecot-count")
    address = gate.add("u", Limits(LIMIT))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    accepted = gate.run("check", address, "--size", str(LIMIT - 3000 * held + 500)) == ACCEPT
    assert not dovecot.deliver("u", message(LIMIT - 3000 * held + 500, 5))  # Dovecot: no room
    if reading.usage.known:
        assert reading.messages == held, reading.usage
    assert not accepted, gate.output
