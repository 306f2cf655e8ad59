"""A mail user whose mailbox path names their home (PostfixAdmin's ``maildir`` column,
``example.org/alice/``) while Dovecot delivers into ``~/Maildir`` (``[spool] maildir_subdir``).

A home that holds cur/, new/ or a maildirsize is measured as a Maildir. A plain ``Maildir/``
holding cur/ makes the mailbox unknown (LAYOUT_HINT); so does a ``Maildir`` that is a symlink to
a Maildir (which Dovecot and every delivery agent follow): the markers in the home may be its
owner's, put there to have the home counted, empty, in place of the mail."""

from __future__ import annotations

import os

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder


@pytest.mark.parametrize("marker", ["maildirsize", "cur+new"])
def test_a_home_that_looks_like_a_maildir_does_not_hide_the_symlinked_maildir_below(env: Env, marker: str) -> None:
    """Attack: alice (over quota: 5000 of 1000 bytes, all in the Maildir Dovecot delivers to)
    moves her Maildir to ``~/x/y``, leaves ``~/Maildir -> x/y`` (deliveries and IMAP go on as
    before) and puts an empty ``~/maildirsize`` (or empty ``~/cur``, ``~/new``) in her home.

    Expected: her mail is counted (the Maildir below, as when the home holds no marker) or the
    mailbox is unknown with a reason, and so stays over quota."""
    home = env.spool / DOMAIN / "alice"
    real = home / "x" / "y"
    add_message(maildir_folder(real), 5000)
    (home / "Maildir").symlink_to("x/y")
    address = env.add("alice", Limits(1000), path=f"{DOMAIN}/alice/")
    first = env.scan().readings[address]
    assert (first.state, first.bytes) == (State.OVER, 5000)  # the symlinked Maildir below is measured

    if marker == "maildirsize":
        (home / "maildirsize").write_text("")
    else:
        (home / "cur").mkdir()
        (home / "new").mkdir()
    reading = env.scan(full=True).readings[address]
    assert reading.state is not State.OK, (
        f"published under quota: {reading.state.value}, {reading.bytes} bytes, warning {reading.usage.warning!r}"
    )
    assert os.path.islink(home / "Maildir")
