"""A Maildir whose folders only changed during each pass of its measurement is taken as last read,
unless it then holds less than at its last reading: mail *moved* between folders (IMAP MOVE: a
rename from one folder's cur/ into another's) changes nothing but the two folders' stamps, as a
delivery or a flag does, and moved each time into the folder not being read it would be in
none of the readings. Such a mailbox is unknown (and kept over quota if it was over), and
stays so while it goes on: the unknown reading carries the folders it was weighed against."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from quotagate.usage import maildir
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder


@pytest.mark.parametrize("scans", [1, 2])
def test_a_message_moved_between_folders_during_each_pass_is_not_lost(
    env: Env, monkeypatch: pytest.MonkeyPatch, scans: int
) -> None:
    """Attack: alice (limit 10,000 bytes) holds 100 bytes in INBOX and a 20,000-byte message
    in Archive: over quota at a scan. Her IMAP client then moves that message between INBOX
    and Archive over and over (MOVE, no shell needed); here each move lands just before the
    scanner looks at a folder, so the message is always in the folder not being read: out of
    INBOX when INBOX is read, out of Archive when Archive is read, in all three passes of each
    scan, through one scan or two (a client loop costs her nothing).

    Expected: alice stays over quota at each (20,100 bytes counted, or unknown and kept over)."""
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
        if not getattr(inside, "reading", False):  # the scanner turns to a folder
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
    for _ in range(scans):
        r = env.scan(full=True).readings[address]
        states.append((r.state.value, r.bytes, r.usage.error or r.usage.warning))
    monkeypatch.undo()
    assert all(state == "over" for state, _, _ in states), f"alice under the attack: {states}"
