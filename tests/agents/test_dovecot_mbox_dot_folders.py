"""mbox folders below a directory whose name starts with a dot, in a Dovecot mbox home."""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import ACCEPT, Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 4000


@pytest.mark.parametrize("folder", [".Archive/2024", "Projects/.old/2023"])
def test_mbox_folders_below_a_dot_directory_count_as_dovecot_counts_them(
    gate: Gate, dovecot: Dovecot, folder: str
) -> None:
    """Scenario: Dovecot with ``mail_location = mbox:~/mail:INBOX=~/mail/inbox`` and ``quota =
    count:`` (no grace, limit 4,000 bytes). Its LDA delivered 500 bytes to INBOX and 3,000
    bytes to the IMAP folder ``.Archive/2024`` (or ``Projects/.old/2023``), as a Sieve
    ``fileinto`` or an IMAP client's MOVE puts them there, no shell needed: Dovecot keeps it as
    the mbox file ``~/mail/.Archive/2024``, lists it and counts it (``doveadm quota get``: 2
    messages, about 3.5 KiB), and refuses a further 1,000 bytes.

    Expected: quotagate (``dovecot-count``, layout ``{local}/mail``) counts that folder as
    Dovecot does (the README: Dovecot "lists and counts an mbox folder ``.stash``", counted by
    quotagate too; only Dovecot's own ``.imap/`` is not mail), or makes the mailbox unknown,
    and ``quotagate check --size 1000`` does not accept. (The whole dot directory was skipped
    as if it were ``.imap/``: known with INBOX alone, 506 bytes, and the message accepted that
    Dovecot refuses.)"""
    dovecot.configure(
        backend="count", limit_bytes=LIMIT, location="mbox:~/mail:INBOX=~/mail/inbox", extra="  quota_grace = 0\n"
    )
    home = dovecot.home("u")
    own(home / "mail")
    assert dovecot.deliver("u", message(500))
    assert dovecot.deliver("u", message(3000), folder)
    assert (home / "mail" / folder).is_file()
    assert folder in dovecot.doveadm("u", "mailbox", "list").splitlines()
    assert dovecot.quota("u").messages == 2

    gate.configure("dovecot-count", layout="{local}/mail")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    code = gate.run("check", "u@example.org", "--size", "1000")
    assert not dovecot.deliver("u", message(1000))  # Dovecot: over quota
    assert code != ACCEPT, gate.output
