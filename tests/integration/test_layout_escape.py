"""A user who breaks up his own Maildir is never known with less than the delivery agent counts:
a root with only one of cur/ and new/ beside an mbox file is neither, and unknown."""

from __future__ import annotations

import os

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder

MBOX = b"From me@example.org Thu Nov  9 22:33:52 2023\nSubject: x\n\nhi\n"


@pytest.mark.parametrize("kept", ["new", "cur"])
def test_a_maildir_root_with_one_of_cur_and_new_and_a_from_file_keeps_its_mail_counted(env: Env, kept: str) -> None:
    """alice (a shell user, [spool] format "auto", the default) is over quota: 20,000 bytes in her
    Maildir for 10,000. She moves all her mail into one of cur/ and new/, removes the other, and
    drops a 60-byte file starting with "From " in her Maildir's root. Read as an mbox home (one of
    cur/ and new/, and an mbox file beside it), the 60-byte file would be her mail and the 20,000
    bytes in ``kept/`` "not mbox files": known, 60 bytes, under quota, while every Maildir agent
    still delivers into new/ and counts them. Neither reading can be trusted: unknown, and her
    flag kept."""
    root = env.maildir("alice")
    inbox = maildir_folder(root)
    for _ in range(4):
        add_message(inbox, 5000, where="new")
    alice = env.add("alice", Limits(10_000))
    assert env.scan(full=True).readings[alice].state is State.OVER
    gone = "cur" if kept == "new" else "new"
    for name in os.listdir(root / gone):
        os.rename(root / gone / name, root / kept / name)
    (root / gone).rmdir()
    (root / "dummy").write_bytes(MBOX)
    reading = env.scan(full=True).readings[alice]
    assert reading.state is State.OVER, (reading.usage.format, reading.bytes, reading.usage.error)
    if reading.usage.known:
        assert reading.bytes >= 20_000
