"""Watches follow the directories a mailbox's paths lead to now: a Maildir or folder moved aside
and replaced by another is watched in its new directory, and the one moved away (perhaps out of
the mailbox) is no longer watched; a folder renamed keeps its watches; an event queue overflow
that loses the end of a watch does not leave its folder unwatched."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from quotagate.model import Limits, State
from quotagate.watch.runner import StorePublisher
from quotagate.watch.tracker import Tracker
from tests.integration.scanenv import Env
from tests.integration.watchrun import deliver, until, watching
from tests.spoolgen import add_message, maildir_folder

QUEUE = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


async def rescan(env: Env, tracker: Tracker, publisher: StorePublisher) -> None:
    """What ``rescan_forever`` does every rescan_seconds, then a few run-loop cycles (the
    resync of the watches)."""
    touched = tracker.begin_rescan()
    result = await asyncio.to_thread(env.scan)
    tracker.adopt(result.readings, touched)
    publisher.reset(result.stored)
    await asyncio.sleep(0.3)


def restored(path: Path, size: int) -> None:
    """A Maildir restored from a backup (or rebuilt by a migration), ready to swap in."""
    add_message(maildir_folder(path), size)


def test_a_swapped_in_maildir_is_watched(env: Env) -> None:
    """alice's Maildir is swapped for a restored copy (``mv Maildir Maildir.old; mv Maildir.new
    Maildir``): she is measured again (200 bytes), and the 5,000 bytes then delivered into the
    new Maildir are seen: she is over quota."""
    root = env.maildir("alice")
    add_message(maildir_folder(root), 100)
    alice = env.add("alice", Limits(1000))

    async def run() -> None:
        async with watching(env) as (tracker, _):
            restored(root.with_name("Maildir.new"), 200)
            root.rename(root.with_name("Maildir.old"))
            root.with_name("Maildir.new").rename(root)
            assert await until(lambda: tracker.readings[alice].bytes == 200)
            deliver(root, 5000)
            assert await until(lambda: tracker.readings[alice].state is State.OVER, seconds=2.0), tracker.readings[
                alice
            ].bytes

    asyncio.run(run())


def test_a_swapped_in_maildir_is_watched_after_a_rescan(env: Env) -> None:
    """The same, past a periodic rescan: once she deletes her mail from the new Maildir, the
    watcher sees it at once, not at the rescan after."""
    root = env.maildir("alice")
    add_message(maildir_folder(root), 100)
    alice = env.add("alice", Limits(1000))

    async def run() -> None:
        async with watching(env) as (tracker, publisher):
            restored(root.with_name("Maildir.new"), 200)
            root.rename(root.with_name("Maildir.old"))
            root.with_name("Maildir.new").rename(root)
            assert await until(lambda: tracker.readings[alice].bytes == 200)
            deliver(root, 5000)
            await asyncio.sleep(0.3)
            await rescan(env, tracker, publisher)
            assert tracker.readings[alice].state is State.OVER
            for sub in ("cur", "new"):
                for name in os.listdir(root / sub):
                    os.unlink(root / sub / name)  # the IMAP client expunges everything
            assert await until(lambda: tracker.readings[alice].state is State.OK, seconds=2.0), tracker.readings[
                alice
            ].bytes

    asyncio.run(run())


def test_a_folder_moved_out_and_made_again_is_watched(env: Env) -> None:
    """alice moves her folder .Archive out of the Maildir (to her home, beside it) and creates a
    new, empty .Archive: what a Sieve ``fileinto "Archive"`` then delivers into it is seen."""
    root = env.maildir("alice")
    maildir_folder(root)
    add_message(maildir_folder(root, "Archive"), 100)
    alice = env.add("alice", Limits(1000))

    async def run() -> None:
        async with watching(env) as (tracker, publisher):
            (root / ".Archive").rename(root.parent / "archive-2023")  # out of the mailbox
            maildir_folder(root, "Archive")
            assert await until(lambda: tracker.readings[alice].bytes == 0)
            await rescan(env, tracker, publisher)
            deliver(root / ".Archive", 5000)
            assert await until(lambda: tracker.readings[alice].bytes == 5000, seconds=2.0), tracker.readings[
                alice
            ].bytes

    asyncio.run(run())


def test_a_folder_moved_out_is_not_counted_from_outside(env: Env) -> None:
    """After the move above, alice's files in the directory outside her mailbox do not count
    (as a scan counts them: not at all): the watcher no longer watches it."""
    root = env.maildir("alice")
    maildir_folder(root)
    add_message(maildir_folder(root, "Archive"), 100)
    alice = env.add("alice", Limits(1000))

    async def run() -> int:
        async with watching(env) as (tracker, _):
            outside = root.parent / "archive-2023"
            (root / ".Archive").rename(outside)
            maildir_folder(root, "Archive")
            assert await until(lambda: tracker.readings[alice].bytes == 0)
            await asyncio.sleep(0.3)
            deliver(outside, 5000)
            await asyncio.sleep(0.5)
            return tracker.readings[alice].bytes

    watched = asyncio.run(run())
    assert watched == env.scan(full=True).readings[alice].bytes == 0
    shutil.rmtree(root.parent / "archive-2023")


def test_a_renamed_folder_keeps_its_watches(env: Env) -> None:
    """alice renames her folder .Archive to .Old: the same directories under new paths. Dropping
    the old paths does not remove the watches the new ones share with them (the watch on its
    new/ stays the one it had, never taken down and added again: events in between would be
    lost), and a message then delivered into .Old is seen."""
    root = env.maildir("alice")
    maildir_folder(root)
    add_message(maildir_folder(root, "Archive"), 100)
    alice = env.add("alice", Limits(1000))

    async def run() -> None:
        async with watching(env) as (tracker, _):
            new = tracker._watches[alice][f"{root}/.Archive/new"]
            (root / ".Archive").rename(root / ".Old")
            assert await until(lambda: {f.name for f in tracker.readings[alice].usage.folders} == {"INBOX", "Old"})
            await asyncio.sleep(0.3)
            assert tracker._watches[alice][f"{root}/.Old/new"] is new
            deliver(root / ".Old", 5000)
            assert await until(lambda: tracker.readings[alice].bytes == 5100, seconds=2.0), tracker.readings[
                alice
            ].bytes

    asyncio.run(run())


def flood(directory: bytes | Path, events: int) -> None:
    """Each dot file costs the watch three events (CREATE, CLOSE_WRITE, DELETE) and counts for
    nothing: any user can do this in their own cur/."""
    for i in range(events // 3 + 1):
        name = os.path.join(os.fsencode(directory), b".flood%d" % i)
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600))
        os.unlink(name)


def test_a_folder_made_again_during_an_overflow_is_watched(env: Env) -> None:
    """alice floods her cur/ until the event queue overflows, and meanwhile removes her folder
    .Archive and makes it again (or her IMAP client does): the end of the old folder's watches
    is among the events lost. The new folder is watched all the same: 5,000 bytes delivered into
    it make her over quota."""
    root = env.maildir("alice")
    add_message(maildir_folder(root), 100)
    archive = maildir_folder(root, "Archive")
    alice = env.add("alice", Limits(1000))

    async def run() -> None:
        async with watching(env) as (tracker, _):
            # Synchronous: the loop reads no event meanwhile, as when it is busy (a flood).
            flood(root / "cur", QUEUE + 100)
            shutil.rmtree(archive)  # its watches' IN_IGNORED come after the overflow: lost
            maildir_folder(root, "Archive")
            await asyncio.sleep(0.5)  # the overflow handled: alice measured again
            deliver(archive, 5000)
            assert await until(lambda: tracker.readings[alice].state is State.OVER, seconds=2.0), tracker.readings[
                alice
            ].bytes

    asyncio.run(run())
