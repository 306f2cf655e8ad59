"""f26bf70, reviewed: a root with only one of cur/ and new/ beside an mbox file is unknown. The
root may be a home, though, whose Maildir is in [spool] maildir_subdir: the ``new/`` there is the
user's own directory, the mbox file his saved mail (``~/mbox``, where mail(1) keeps what was
read), and his mail is in ``Maildir/``, read correctly before."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder

MBOX = b"From me@example.org Thu Nov  9 22:33:52 2023\nSubject: saved\n\nread mail, kept by mail(1)\n"


@pytest.mark.parametrize("measured_before", [False, True], ids=["new mailbox", "measured before"])
def test_a_home_with_a_new_directory_and_an_mbox_file_still_counts_its_maildir(env: Env, measured_before: bool) -> None:
    """bob's mailbox path names his home (PostfixAdmin's ``maildir`` column, a system user's
    home): Postfix's ``home_mailbox = Maildir/`` and Dovecot deliver into ``~/Maildir``
    ([spool] maildir_subdir, the default), 20,000 bytes for a limit of 10,000. His home also
    holds ``~/mbox`` (mail(1)'s saved messages, an mbox file) and a directory of his named
    ``new``. Before f26bf70 the home was no Maildir (one of cur/ and new/, and an mbox file)
    and his ``Maildir/`` was read: over quota. Now the home is a "half Maildir": unknown, and
    (unless over at the last reading) DUNNO: every message accepted. Nothing of his Maildir is
    missing or ambiguous: it is what the delivery agent writes and counts."""
    home = env.spool / "example.org" / "bob"
    inbox = maildir_folder(home / "Maildir")
    for _ in range(4):
        add_message(inbox, 5000)
    bob = env.add("bob", Limits(10_000), path="example.org/bob")
    if measured_before:
        assert env.scan(full=True).readings[bob].state is State.OVER
    (home / "new").mkdir()
    (home / "new" / "todo.txt").write_text("a directory of his, not mail\n")
    (home / "mbox").write_bytes(MBOX)
    reading = env.scan(full=True).readings[bob]
    assert reading.usage.known, reading.usage.error
    assert (reading.bytes, reading.state) == (20_000, State.OVER)


def test_a_home_with_a_new_directory_and_an_mbox_file_is_known_under_quota_too(env: Env) -> None:
    """The same home, under quota (10,000 bytes of 30,000): unknown is DUNNO, so a user one
    message short of his limit who makes a ``~/new`` and drops any "From " file in his home
    is let receive without limit; before f26bf70 his Maildir was read and counted."""
    home = env.spool / "example.org" / "carl"
    inbox = maildir_folder(home / "Maildir")
    for _ in range(2):
        add_message(inbox, 5000)
    carl = env.add("carl", Limits(30_000), path="example.org/carl")
    (home / "new").mkdir()
    (home / "mbox").write_bytes(MBOX)
    reading = env.scan(full=True).readings[carl]
    assert reading.usage.known, reading.usage.error
    assert (reading.bytes, reading.state) == (10_000, State.OK)


LINE = b"x" * 99 + b"\n"


def mbox_file(path: Path, size: int) -> None:
    body = LINE * (size // len(LINE))
    path.write_bytes(b"From me@example.org Thu Nov  9 22:33:52 2023\nSubject: kept\n\n" + body)


def test_an_mbox_home_over_quota_does_not_escape_by_a_new_folder_and_an_empty_maildir(env: Env) -> None:
    home = env.spool / "example.org" / "dan"
    home.mkdir(parents=True)
    mbox_file(home / "archive", 20_000)
    dan = env.add("dan", Limits(10_000), path="example.org/dan")
    first = env.scan(full=True).readings[dan]
    assert first.usage.known and first.state is State.OVER, first
    # His IMAP folder "archive" renamed "new/2024": Dovecot keeps it as the mbox file new/2024.
    (home / "new").mkdir()
    (home / "archive").rename(home / "new" / "2024")
    second = env.scan().readings[dan]
    assert second.state is State.OVER, second  # unknown (half a Maildir), its flag kept
    # Then the folder "Maildir/x" (a directory Maildir/ holding the mbox file x, empty).
    (home / "Maildir").mkdir()
    (home / "Maildir" / "x").write_bytes(b"")
    third = env.scan().readings[dan]
    assert third.state is State.OVER or not third.usage.known, (
        f"{third.state}, {third.bytes} bytes known: 20,000 bytes of mail in new/2024 left out"
    )
