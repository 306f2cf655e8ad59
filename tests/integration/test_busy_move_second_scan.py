"""A Maildir whose folders keep changing and hold less than its last reading is unknown; a last
reading that was itself unknown leaves nothing to weigh against, and the mailbox stays unknown
(kept over) while its folders keep changing: the baseline the rule had made unknown was gone at
the next scan, and the mail kept moving was taken as gone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from quotagate.usage import maildir
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder


def test_moving_a_message_between_folders_through_two_scans_opens_a_full_mailbox(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: as tests/integration/test_busy_mailbox_move.py: alice (limit 10,000 bytes)
    holds 100 bytes in INBOX and a 20,000-byte message in Archive: over quota. Her IMAP client
    then keeps MOVEing that message between INBOX and Archive, each move landing just before
    the scanner turns to a folder, so it is always in the folder not being read. The attack
    simply goes on through the next scan too (a client loop costs her nothing).

    Expected: alice stays over quota at both scans (20,100 bytes counted, or unknown and kept
    over)."""
    root = env.maildir("alice")
    inbox = Path(os.fsdecode(maildir_folder(root)))
    archive = Path(os.fsdecode(maildir_folder(root, "Archive")))
    add_message(inbox, 100)
    big = Path(os.fsdecode(add_message(archive, 20_000)))
    address = env.add("alice", Limits(10_000))
    assert env.scan(full=True).readings[address].state is State.OVER

    inbox_ino, archive_ino = inbox.stat().st_ino, archive.stat().st_ino
    where = {"path": big}
    inside = threading.local()
    look, read_folder = maildir.look, maildir.read_folder

    def move_to(folder: Path) -> None:
        target = folder / "cur" / where["path"].name
        if where["path"] != target:
            os.rename(where["path"], target)
            where["path"] = target

    def looking(folder_fd: int) -> maildir.Look:
        if not getattr(inside, "reading", False):
            ino = os.fstat(folder_fd).st_ino
            if ino == inbox_ino:
                move_to(archive)
            elif ino == archive_ino:
                move_to(inbox)
        return look(folder_fd)

    def reading(*args: object, **kwargs: object) -> object:
        inside.reading = True
        try:
            return read_folder(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            inside.reading = False

    monkeypatch.setattr(maildir, "look", looking)
    monkeypatch.setattr(maildir, "read_folder", reading)
    states = []
    for _ in range(2):
        r = env.scan(full=True).readings[address]
        states.append((r.state.value, r.bytes, r.usage.error))
    monkeypatch.undo()
    assert all(state == "over" for state, _, _ in states), f"alice at two scans under the attack: {states}"
