"""mbox files as Dovecot itself rewrites them, counted under the Dovecot profiles."""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import ACCEPT, Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]


@pytest.mark.parametrize("profile", ["dovecot", "dovecot-count"])
def test_dovecots_folder_internal_data_message_is_not_mail(gate: Gate, dovecot: Dovecot, profile: str) -> None:
    """Once every message of an mbox is expunged, Dovecot keeps the mailbox's UIDVALIDITY in a
    pseudo message at its top ("DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA", with an
    ``X-IMAP:`` header), as c-client (UW-IMAP, Pine) does. Dovecot hides it: ``doveadm mailbox
    status`` counts the one real message after it, and so do the Dovecot profiles, which split
    and size an mbox as Dovecot does (counted, it was a message more: a mailbox at its message
    limit counted as over it, and its ~700 bytes (virtual) more)."""
    dovecot.configure(backend="count", limit_bytes=10**6, location="mbox:~/mail:INBOX=~/inbox")
    home = dovecot.reset("u")
    own(home / "mail")
    for _ in range(2):
        assert dovecot.deliver("u", message(1000, 3))
    dovecot.doveadm("u", "expunge", "mailbox", "INBOX", "all")
    assert dovecot.deliver("u", message(1000, 3))
    assert b"FOLDER INTERNAL DATA" in (home / "inbox").read_bytes()
    messages, vsize = dovecot.status("u")
    assert messages == 1
    gate.configure(profile, layout="{local}/inbox")
    gate.add("u", Limits(10**6, 1))
    gate.scan()
    counted_bytes, counted_messages = gate.counted("u")
    if profile == "dovecot-count":
        assert (counted_bytes, counted_messages) == (vsize, messages)
    else:
        assert counted_messages == messages


@pytest.mark.parametrize("profile", ["files", "dovecot-count"])
@pytest.mark.parametrize("folders", [("Projects/new/2024", "Projects/plans"), ("new/2024", "plans")])
def test_mbox_folders_below_an_imap_folder_named_new_are_counted(
    gate: Gate, dovecot: Dovecot, profile: str, folders: tuple[str, str]
) -> None:
    """An IMAP user makes the folders ``Projects/new/2024`` and ``Projects/plans`` (any name is
    theirs to choose): Dovecot's mbox layout makes ``mail/Projects/new/`` a directory holding the
    mbox file ``2024``. Taken for a Maildir (it "holds new/"), ``Projects/`` was passed over: the
    mailbox stayed known with INBOX alone. With ``new/2024`` at the top, the whole mbox home "was
    a Maildir": ``new/2024`` one message and INBOX and every other folder nothing. Either way a
    full mailbox took mail Dovecot then refused. A Maildir holds cur/ and new/ both (and no
    mbox file): these are counted as the mbox folders they are."""
    dovecot.configure(
        backend="count", limit_bytes=10_000, location="mbox:~/mail:INBOX=~/mail/inbox", extra="  quota_grace = 0\n"
    )
    home = dovecot.reset("u")
    own(home / "mail")
    for folder in ("INBOX", *folders):
        assert dovecot.deliver("u", message(3000, 5), folder)
    assert (home / "mail" / folders[0]).is_file()
    messages, _vsize = dovecot.status("u")
    assert messages == 3
    gate.configure(profile, layout="{local}/mail", grace="0")  # as Dovecot's quota_grace here
    address = gate.add("u", Limits(10_000))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    accepted = gate.run("check", address, "--size", "1500") == ACCEPT
    assert not dovecot.deliver("u", message(1500, 5))  # Dovecot: no room
    if reading.usage.known:
        assert reading.messages == 3, reading.usage
    assert not accepted, gate.output
