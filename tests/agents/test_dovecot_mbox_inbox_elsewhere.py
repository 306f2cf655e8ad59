"""Debian's own Dovecot mbox layout, ``mail_location = mbox:~/mail:INBOX=/var/mail/%u``
(dovecot-core's conf.d/10-mail.conf as shipped): the folders in ``~/mail``, INBOX a file
elsewhere, and Dovecot's index of INBOX in ``~/mail/.imap/INBOX/``."""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import ACCEPT, Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 3000


def test_an_mbox_home_whose_inbox_dovecot_keeps_elsewhere_is_not_known_with_its_folders_alone(
    gate: Gate, dovecot: Dovecot
) -> None:
    """Scenario: Dovecot with ``quota = count:`` (no grace, limit 3,000 bytes) and Debian's
    mbox layout, INBOX kept outside ``~/mail`` (here ``INBOX=~/spoolfile``, as
    ``/var/mail/%u``). Its LDA delivered 2,000 bytes to INBOX and 300 to the folder Archive;
    ``~/mail`` holds the mbox file ``Archive`` and Dovecot's index directory ``.imap/`` with
    ``.imap/INBOX/dovecot.index.log``: the index of an INBOX that is not in ``~/mail``. The
    admin points quotagate at the folders (``layout = "{local}/mail"``, profile
    ``dovecot-count``).

    Expected: quotagate does not know this mailbox as holding the folders alone: never
    ``accept`` for a message Dovecot refuses (unknown, answering DUNNO, or the whole mailbox
    counted). Today it is known with 306 bytes (Archive alone, 10% full) and ``check --size
    1000`` accepts, while ``dovecot-lda`` refuses the message over quota."""
    dovecot.configure(
        backend="count", limit_bytes=LIMIT, location="mbox:~/mail:INBOX=~/spoolfile", extra="  quota_grace = 0\n"
    )
    home = dovecot.home("u")
    own(home / "mail")
    assert dovecot.deliver("u", message(2000))
    assert dovecot.deliver("u", message(300), "Archive")
    assert (home / "mail" / ".imap" / "INBOX" / "dovecot.index.log").is_file()
    assert not (home / "mail" / "inbox").exists()

    gate.configure("dovecot-count", layout="{local}/mail")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    code = gate.run("check", "u@example.org", "--size", "1000")
    assert not dovecot.deliver("u", message(1000))  # Dovecot: over quota
    assert code != ACCEPT, gate.output
