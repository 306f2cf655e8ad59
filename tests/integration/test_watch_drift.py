"""The watcher's usage never drifts below what a scan finds: an entry the scan does not count (a
symlink or a FIFO in cur/, named as a big message) lowers nothing when its owner deletes it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.integration.watchrun import until, watching
from tests.spoolgen import add_message, maildir_folder


def _plant(kind: str, path: Path) -> None:
    if kind == "symlink":
        path.symlink_to("/dev/null")
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_removing_an_uncounted_non_file_entry_does_not_lower_usage(env: Env, kind: str) -> None:
    """zed is over quota with 5,000 bytes of real mail; his cur/ also holds a symlink (or a FIFO)
    named as a 4,900-byte message, which no scan counts (regular files only). He deletes it,
    hoping the watcher takes the name's size off his usage and lets him under quota: his usage
    stays what a scan finds, 5,000 bytes, over quota."""
    root = env.maildir("zed")
    add_message(maildir_folder(root), 5000)
    _plant(kind, root / "cur" / "1700000001.M1P1.evil,S=4900:2,S")
    zed = env.add("zed", Limits(1000))

    async def run() -> tuple[int, State]:
        async with watching(env) as (tracker, _):
            assert tracker.readings[zed].bytes == 5000
            assert tracker.readings[zed].state is State.OVER
            os.unlink(root / "cur" / "1700000001.M1P1.evil,S=4900:2,S")
            await until(lambda: tracker.readings[zed].bytes != 5000, seconds=1.0)
            reading = tracker.readings[zed]
            return reading.bytes, reading.state

    watched = asyncio.run(run())
    scanned = env.scan(full=True).readings[zed]
    assert watched == (scanned.bytes, scanned.state) == (5000, State.OVER)


def test_entries_planted_while_watched_do_not_lower_usage_below_quota(env: Env) -> None:
    """zed, 4x over quota, plants the same while watched, over and over: symlinks named as big
    messages (counted by their arrival, as a scan would count a message), an unsized file that
    makes the watcher measure his mailbox (the symlinks drop out), then deletes the symlinks.
    Each deletion is measured, not taken off by the name's size: he stays 20,000 bytes, over."""
    root = env.maildir("zed")
    add_message(maildir_folder(root), 20_000)
    zed = env.add("zed", Limits(5000))
    planted = [root / "cur" / f"1700000001.M{i}P1.evil,S=9000:2,S" for i in range(2)]

    async def run() -> tuple[int, State]:
        async with watching(env) as (tracker, _):
            assert tracker.readings[zed].state is State.OVER
            for link in planted:
                link.symlink_to("/dev/null")
            assert await until(lambda: tracker.readings[zed].bytes == 38_000, seconds=1.0)
            (root / "cur" / "junk").write_bytes(b"")  # unsized: the mailbox is measured again
            assert await until(lambda: tracker.readings[zed].bytes == 20_000, seconds=1.0)
            await asyncio.sleep(0.2)
            for link in planted:
                link.unlink()
            await until(lambda: tracker.readings[zed].bytes != 20_000, seconds=1.0)
            reading = tracker.readings[zed]
            return reading.bytes, reading.state

    watched = asyncio.run(run())
    scanned = env.scan(full=True).readings[zed]
    assert watched == (scanned.bytes, scanned.state) == (20_000, State.OVER)


def test_an_uncounted_entry_moved_out_of_the_mailbox_does_not_lower_usage(env: Env) -> None:
    """The same symlink, moved to tmp/ (not watched, not counted) or renamed to a dot name rather
    than deleted: a rename lowers the usage only when the entry arrives as a message in the same
    mailbox, so zed stays at what a scan finds."""
    root = env.maildir("zed")
    for _ in range(4):  # messages enough for the planted ones to leave without a negative count
        add_message(maildir_folder(root), 5000)
    for i in range(2):
        _plant("symlink", root / "cur" / f"1700000001.M{i}P1.evil,S=9000:2,S")
    zed = env.add("zed", Limits(5000))

    async def run() -> int:
        async with watching(env) as (tracker, _):
            assert tracker.readings[zed].bytes == 20_000
            os.rename(root / "cur" / "1700000001.M0P1.evil,S=9000:2,S", root / "tmp" / "x")
            os.rename(root / "cur" / "1700000001.M1P1.evil,S=9000:2,S", root / "cur" / ".hidden")
            await until(lambda: tracker.readings[zed].bytes != 20_000, seconds=1.0)
            return tracker.readings[zed].bytes

    assert asyncio.run(run()) == env.scan(full=True).readings[zed].bytes == 20_000


def test_messages_moved_between_folders_are_still_counted_as_they_go(env: Env) -> None:
    """A message read (new/ to cur/, a flag added) or moved to another folder is a rename in the
    mailbox: its leaving and arriving cancel out, without a measurement that could miss it."""
    root = env.maildir("alice")
    inbox = maildir_folder(root)
    archive = maildir_folder(root, "Archive")
    alice = env.add("alice", Limits(10**6))

    async def run() -> tuple[int, int]:
        async with watching(env) as (tracker, _):
            delivered = add_message(inbox, 700, where="new")
            assert await until(lambda: tracker.readings[alice].bytes == 700)
            read = os.path.join(os.fsencode(inbox), b"cur", os.path.basename(delivered) + b":2,S")
            os.rename(delivered, read)
            os.rename(read, os.path.join(os.fsencode(archive), b"cur", os.path.basename(read)))
            await asyncio.sleep(0.3)
            folders = {f.name: f.bytes for f in tracker.readings[alice].usage.folders}
            return folders["INBOX"], folders["Archive"]

    assert asyncio.run(run()) == (0, 700)
