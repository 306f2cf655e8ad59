"""A home measured as a Maildir that also holds a symlink named ``[spool] maildir_subdir``
leading to a Maildir is unknown. A symlink leading back to the home itself (``Maildir -> .``,
or an absolute link to the same directory) is no second Maildir: it is the one measured, a link
some sites keep so that ``~/Maildir`` and the home both name the mailbox (Courier/qmail homes
that are Maildirs, PostfixAdmin paths with and without ``Maildir/``)."""

from __future__ import annotations

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder


@pytest.mark.parametrize("target", ["relative", "absolute"])
def test_a_maildir_with_a_maildir_symlink_to_itself_is_measured(env: Env, target: str) -> None:
    """Setup (no attack): alice's mailbox directory is her Maildir (5,000 bytes, limit 1,000)
    and holds ``Maildir -> .`` (or ``-> /its/own/path``). Expected: measured as before the
    fix, over quota with 5,000 bytes: the symlink leads to the very directory measured, so
    there is no other Maildir the agent could deliver to. Now: unknown ("a Maildir here, and
    another through the symlink"), at every scan, and never refused had it been under quota."""
    home = env.spool / DOMAIN / "alice"
    add_message(maildir_folder(home), 5000)
    (home / "Maildir").symlink_to("." if target == "relative" else str(home))
    address = env.add("alice", Limits(1000), path=f"{DOMAIN}/alice/")
    reading = env.scan(full=True).readings[address]
    assert (reading.state, reading.bytes) == (State.OVER, 5000), (
        f"{reading.state.value}, {reading.bytes} bytes: {reading.usage.error or reading.usage.warning!r}"
    )
