"""A message file whose name starts with two dots, against Dovecot's ``quota = maildir:``."""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import Gate
from tests.agents.oddnames import lay
from tests.servers.dovecot import Dovecot

pytestmark = [pytest.mark.servers, pytest.mark.mta]


def test_a_name_starting_with_two_dots_is_not_counted_as_dovecot_does_not(gate: Gate, dovecot: Dovecot) -> None:
    """Scenario: Dovecot 2.3 with ``quota = maildir:``. INBOX's ``cur/`` holds an ordinary
    message (300 bytes) and the entry ``..stash,S=5000:2,S`` (a file of 5,000 bytes). Dovecot's
    ``maildir_sum_dir`` (quota-maildir.c) skips every name whose first two characters are
    ``..`` (its test for "." and ".." looks at two characters only), so ``doveadm quota recalc``
    writes ``300 1`` into maildirsize. The README says the dovecot profile counts "every entry of
    cur/ and new/ ..., dot files ... too", as Dovecot does.

    Expected: quotagate's dovecot profile counts what Dovecot counts, 300 bytes and 1 message.
    Today it counts the ``..`` file too (5,300 bytes, 2 messages), and refuses mail Dovecot takes."""
    dovecot.configure(backend="maildir", limit_bytes=10**9, limit_messages=1000)
    md = dovecot.home("u") / "Maildir"
    lay(md, "file", "..stash,S=5000:2,S")
    (md / "cur" / "..stash,S=5000:2,S").write_bytes(b"x" * 5000)
    gate.configure("dovecot")
    gate.add("u", Limits(10**9, 1000))
    gate.scan()
    dovecot.recalc("u")
    theirs = (md / "maildirsize").read_text().splitlines()[1:]
    assert theirs == ["300 1"]
    assert gate.files("u") == (300, 1)
