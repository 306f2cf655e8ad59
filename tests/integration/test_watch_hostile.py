"""The watcher against its users: what one mailbox's owner does to its files must neither blind
the watcher to another mailbox, nor stop it, nor make it count otherwise than a scan does."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncinotify
import pytest
from asyncinotify import Mask
from msgspec.structs import replace

from quotagate.model import Limits, Reading, State
from quotagate.usage.mailbox import Found
from quotagate.usage.maildirsize import MAX_SIZE
from quotagate.watch.runner import start_tracker
from quotagate.watch.tracker import Tracker
from tests.integration.scanenv import Env
from tests.integration.watchrun import deliver, until
from tests.spoolgen import add_message, maildir_folder, write_mbox


@asynccontextmanager
async def watching(env: Env, **sections: Any) -> AsyncIterator[tuple[Tracker, asyncio.Task[None]]]:
    """``quotagate watch``'s tracker over ``env`` (primed by its scan, writing to its store),
    running until the block ends; ``sections`` go into the config."""
    env.configure(
        watch={"flush_seconds": 0.05, "poll_seconds": 0.1}, scan={"workers": 1, "racy_seconds": 0}, **sections
    )
    tracker, _ = await start_tracker(env.config, env.store)
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.sleep(0.3)  # the first flushes done, every watch in place
        yield tracker, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def alive(task: asyncio.Task[None]) -> bool:
    return not task.done()


# -- one mailbox pointed at another's directory ---------------------------------------------------
def test_a_mailbox_symlinked_to_anothers_new_does_not_blind_the_watcher_to_it(env: Env) -> None:
    """zed points his Maildir at bob's new/: measured as an mbox directory, zed's watch is bob's
    (inotify has one per inode). Bob's deliveries (renames into new/) must still be seen."""
    bob = env.maildir("bob")
    maildir_folder(bob)
    env.maildir("zed").parent.mkdir(parents=True)
    env.maildir("zed").symlink_to("../bob/Maildir/new")  # within the spool: followed, as the scan does
    env.add("bob")
    env.add("zed")

    async def run() -> None:
        async with watching(env) as (tracker, task):
            deliver(bob, 2000)
            assert await until(lambda: tracker.readings["bob@example.org"].bytes == 2000)
            assert alive(task)

    asyncio.run(run())


def test_a_folder_swapped_for_a_symlink_is_not_watched_through_it(env: Env) -> None:
    """Between alice's measurement and her watches, she swaps her folder .Archive for a symlink
    to bob's: no watch of hers may land in bob's folder (her events would count his mail)."""
    alice, bob = env.maildir("alice"), env.maildir("bob")
    for maildir in (alice, bob):
        maildir_folder(maildir)
        maildir_folder(maildir, "Archive")
    env.add("alice")
    env.add("bob", Limits(10**6))
    env.configure(scan={"workers": 1, "racy_seconds": 0})
    readings = env.scan().readings

    async def run() -> None:
        async def publish(changed: list[Reading], removed: list[str]) -> None:
            pass

        tracker = Tracker(env.config, publish)
        tracker.load(env.store.mailboxes(), {"alice@example.org": readings["alice@example.org"]})
        shutil.rmtree(alice / ".Archive")
        (alice / ".Archive").symlink_to("../../bob/Maildir/.Archive")
        tracker.start_watching()  # alice's reading still lists Archive
        try:
            assert tracker._inotify is not None
            alices = set(tracker._watches["alice@example.org"].values())
            for sub in ("", "/cur", "/new"):
                probe = tracker._inotify.add_watch(f"{bob}/.Archive{sub}", Mask.ACCESS | Mask.MASK_ADD)
                assert probe not in alices, sub
        finally:
            tracker.close()

    asyncio.run(run())


# -- forged sizes ----------------------------------------------------------------------------------
def test_forged_sizes_saturate_as_the_scan_does_and_the_watcher_goes_on(env: Env) -> None:
    alice, bob = env.maildir("alice"), env.maildir("bob")
    maildir_folder(alice)
    maildir_folder(bob)
    env.add("alice", Limits(1000))
    env.add("bob", Limits(10**6))

    async def run() -> None:
        async with watching(env) as (tracker, task):
            for _ in range(20):  # 20 x 10**18 - 1 bytes: past what a 64-bit column holds
                deliver(alice, 1, name_size=999_999_999_999_999_999)
            assert await until(lambda: tracker.readings["alice@example.org"].messages == 20)
            deliver(bob, 300)
            assert await until(lambda: env.store.readings()["bob@example.org"].bytes == 300)
            assert alive(task)
            assert tracker.readings["alice@example.org"].bytes == MAX_SIZE
            assert env.store.readings()["alice@example.org"].bytes == MAX_SIZE

    asyncio.run(run())
    env.scan(full=True)  # and that is what a scan stores
    assert env.store.readings()["alice@example.org"].bytes == MAX_SIZE


@pytest.mark.parametrize("to", ["Trash", "INBOX"])
def test_an_uncounted_entry_renamed_does_not_lower_the_usage(env: Env, to: str) -> None:
    """Scenario: alice's INBOX holds 1,000,000 bytes of mail and a symlink named as a message of
    900,000 bytes (never counted); she renames it into her Trash, which a folder rule leaves out
    (or, within INBOX, to a name of 1 byte).
    Expected: the usage stays at 1,000,000 bytes, 10 messages.
    Before the fix: the watcher paired the rename's two events and moved the size in the name
    out of INBOX (into the excluded Trash, or down to 1 byte): 100,000 bytes counted, a full
    mailbox open until something measured it again, as often as she liked."""
    alice = env.maildir("alice")
    inbox = maildir_folder(alice)
    trash = maildir_folder(alice, "Trash")
    for _ in range(10):
        add_message(inbox, 100_000)
    name = b"1700000001.M1P1.h,S=900000:2,S"
    os.symlink("/nonexistent", os.path.join(inbox, b"cur", name))
    address = env.add("alice", Limits(1_000_000))
    rules = [{"match": "Trash", "exclude": True}]
    smaller = b"1700000001.M1P1.h,S=1:2,S"
    target = os.path.join(trash, b"cur", name) if to == "Trash" else os.path.join(inbox, b"cur", smaller)

    def counted(tracker: Tracker) -> tuple[int, int]:
        reading = tracker.readings[address]
        return reading.bytes, reading.messages

    async def run() -> None:
        async with watching(env, folders=rules) as (tracker, task):
            assert counted(tracker) == (1_000_000, 10)
            os.rename(os.path.join(inbox, b"cur", name), target)
            await asyncio.sleep(1.0)  # flushes, and a measurement if one is due
            assert counted(tracker) == (1_000_000, 10)
            assert alive(task)

    asyncio.run(run())


def test_a_reading_the_store_cannot_hold_is_not_published_and_the_others_are(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = env.maildir("alice"), env.maildir("bob")
    add_message(maildir_folder(alice), 100)
    maildir_folder(bob)
    env.add("alice")
    env.add("bob")

    async def run() -> None:
        async with watching(env) as (tracker, task):
            measure = tracker._measure_one

            def absurd(address: str) -> Found:
                found = measure(address)
                if address == "alice@example.org":  # what a measuring bug could hand on
                    huge = tuple(f._replace(bytes=2**64) for f in found.usage.folders)
                    found = Found(found.path, replace(found.usage, folders=huge))
                return found

            tracker._measure_one = absurd  # type: ignore[method-assign]
            tracker.mark_dirty("alice@example.org")
            deliver(bob, 300)
            assert await until(lambda: env.store.readings()["bob@example.org"].bytes == 300)
            assert alive(task)
            assert tracker.readings["alice@example.org"].bytes == 100  # as it was
            assert env.store.readings()["alice@example.org"].bytes == 100

    with caplog.at_level(logging.ERROR, logger="quotagate"):
        asyncio.run(run())
    assert any("alice@example.org" in r.getMessage() and "store" in r.getMessage() for r in caplog.records)


# -- out of watches ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.ENOMEM, errno.EMFILE])
def test_a_mailbox_that_cannot_be_watched_is_polled_and_the_others_stay_watched(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    alice, bob = env.maildir("alice"), env.maildir("bob")
    maildir_folder(alice)
    maildir_folder(bob)
    env.add("alice")
    env.add("bob")

    def out_of_watches(self: asyncinotify.Inotify, path: object, mask: Mask) -> asyncinotify.Watch:
        raise OSError(code, os.strerror(code))

    async def run() -> None:
        async with watching(env) as (tracker, task):
            monkeypatch.setattr(asyncinotify.Inotify, "add_watch", out_of_watches)  # the limit is reached
            for i in range(3):  # alice's new folders want watches
                add_message(maildir_folder(alice, f"f{i}"), 10)
            assert await until(lambda: tracker.readings["alice@example.org"].bytes == 30)
            add_message(alice / ".f0", 5, where="new")  # in a folder without a watch: polled
            assert await until(lambda: tracker.readings["alice@example.org"].bytes == 35)
            deliver(bob, 300)  # bob's watches are as they were
            assert await until(lambda: tracker.readings["bob@example.org"].bytes == 300)
            add_message(maildir_folder(bob, "g"), 7)  # bob's new folder gets no watch either
            assert await until(lambda: tracker.readings["bob@example.org"].bytes == 307)
            # Its watches are brought up to date after the measurement that counted it.
            assert await until(lambda: tracker._polled == {"alice@example.org", "bob@example.org"})
            assert alive(task)

    with caplog.at_level(logging.WARNING, logger="quotagate"):
        asyncio.run(run())
    polled = [r.getMessage() for r in caplog.records if "polling" in r.getMessage()]
    assert len(polled) == 1 and "alice@example.org" in polled[0], polled  # said once, not per mailbox


# -- accounting profiles -----------------------------------------------------------------------------
def _to_cur_deleted(alice: Path) -> None:
    """Courier leaves a message flagged T (deleted) out of the count."""
    [name] = os.listdir(alice / "cur")
    os.rename(alice / "cur" / name, alice / "cur" / f"{name}T")


STEPS: dict[str, Callable[[Path], object]] = {
    "W= differs from S=": lambda alice: deliver(alice, 1000),  # add_message names W= size + 10
    "S= that is not the file's size": lambda alice: deliver(alice, 1000, name_size=10),
    "flagged deleted": _to_cur_deleted,
    "dot file": lambda alice: deliver(alice, 1000, unique=".hidden,S=1000"),
}


@pytest.mark.parametrize(
    ("accounting", "step"),
    [
        ("dovecot-count", "W= differs from S="),
        ("exim", "S= that is not the file's size"),
        ("courier", "flagged deleted"),
        ("dovecot", "dot file"),
        ("files", "dot file"),
        ("files", "W= differs from S="),
    ],
)
def test_the_watcher_counts_as_the_accounting_profile_does(env: Env, accounting: str, step: str) -> None:
    """Whatever the event, the watcher's reading is the one a scan stores afterwards."""
    alice = env.maildir("alice")
    add_message(maildir_folder(alice), 500)
    env.add("alice")

    async def run() -> tuple[int, int]:
        async with watching(env, spool={"accounting": accounting}) as (tracker, task):
            STEPS[step](alice)
            await asyncio.sleep(0.5)  # the events handled, a few flushes passed
            assert alive(task)
            reading = tracker.readings["alice@example.org"]
            return reading.bytes, reading.messages

    watched = asyncio.run(run())
    scanned = env.scan(full=True).readings["alice@example.org"]
    assert watched == (scanned.bytes, scanned.messages)


# -- a mailbox that takes for ever to measure -------------------------------------------------------
def test_a_mailbox_that_takes_for_ever_to_measure_does_not_hold_up_the_others(env: Env) -> None:
    """zed drops an 8 TiB sparse file in his mbox home: Dovecot splits an mbox by reading every
    byte, holes too. Measured within [scan] mailbox_timeout (unknown after it), as a scan does, so
    bob's delivery is still published."""
    bob = env.maildir("bob")
    maildir_folder(bob)
    home = env.spool / "example.org" / "zed" / "mail"
    home.mkdir(parents=True)
    (home / "inbox").write_bytes(b"From a@example.net Thu Nov  9 22:33:52 2023\nSubject: x\n\nhi\n")
    env.add("bob")
    env.add("zed", path="example.org/zed/mail")

    async def run() -> None:
        async with watching(env, spool={"accounting": "dovecot"}) as (tracker, task):
            env.configure(scan={"workers": 1, "racy_seconds": 0, "mailbox_timeout": 0.5})
            tracker.config = env.config
            with open(home / "big", "wb") as big:
                big.write(b"From a@example.net Thu Nov  9 22:33:52 2023\n\n")
                big.truncate(8 << 40)
            await asyncio.sleep(0.3)  # zed is being measured
            deliver(bob, 300)
            assert await until(lambda: env.store.readings()["bob@example.org"].bytes == 300, seconds=10)
            assert alive(task)
            assert not tracker.readings["zed@example.org"].usage.known

    asyncio.run(run())


# -- a directory above some mailboxes gone -----------------------------------------------------------
def test_a_vanished_domain_directory_keeps_its_full_mailboxes_over(env: Env) -> None:
    """The watcher, as a scan: mailboxes measured before whose domain directory is gone (an
    unmounted volume) are unknown, and a full one stays over quota; one whose own Maildir its
    owner removed is empty."""
    for i in range(20):
        add_message(maildir_folder(env.spool / "big.test" / f"u{i}" / "Maildir"), 100)
        env.add(f"u{i}", path=f"big.test/u{i}/Maildir")
    add_message(maildir_folder(env.spool / "small.test" / "full" / "Maildir"), 5000)
    add_message(maildir_folder(env.spool / "big.test" / "mine" / "Maildir"), 5000)
    full = env.add("full", Limits(1000), path="small.test/full/Maildir")
    mine = env.add("mine", Limits(1000), path="big.test/mine/Maildir")

    async def run() -> None:
        async with watching(env) as (tracker, task):
            assert tracker.readings[full].bytes == tracker.readings[mine].bytes == 5000
            # An unmounted volume's directory is left empty (its watches get IN_UNMOUNT); one
            # deleted raises DELETE_SELF: either way the mailbox is measured again, and its domain
            # has no directory for it.
            shutil.rmtree(env.spool / "small.test")
            shutil.rmtree(env.spool / "big.test" / "mine" / "Maildir")
            assert await until(lambda: tracker.readings[mine].bytes == 0)
            assert await until(lambda: not tracker.readings[full].usage.known)
            assert alive(task)
        assert env.store.readings()[full].state is State.OVER

    asyncio.run(run())


def test_a_full_mailbox_its_owner_makes_unknown_stays_over(env: Env, tmp_path: Path) -> None:
    """The owner of a full mailbox points it outside the spool: unknown, and kept over quota (as a
    scan keeps it), not opened until the next scan."""
    root = env.maildir("zed")
    add_message(maildir_folder(root), 5000)
    zed = env.add("zed", Limits(1000))
    elsewhere = tmp_path / "elsewhere"
    maildir_folder(elsewhere)

    async def run() -> None:
        async with watching(env) as (tracker, task):
            assert tracker.readings[zed].state is State.OVER
            root.rename(root.with_name("Maildir.old"))
            root.symlink_to(elsewhere)
            assert await until(lambda: not tracker.readings[zed].usage.known)
            assert tracker.readings[zed].state is State.OVER
            assert await until(lambda: not env.store.readings()[zed].usage.known)
            assert env.store.readings()[zed].state is State.OVER
            assert alive(task)

    asyncio.run(run())


def test_deliveries_to_a_maildir_beside_an_mbox_homes_files_are_seen(env: Env) -> None:
    """A migration left the mbox files, and new mail goes to the Maildir beside them: the home's
    one watch does not see into it, so the watcher polls it."""
    home = env.spool / "example.org" / "zed" / "mail"
    write_mbox(home / "inbox", ["x" * 100 + "\n"])
    zed = env.add("zed", Limits(5000), path="example.org/zed/mail")
    env.scan()
    inbox = maildir_folder(home / "Maildir")

    async def run() -> None:
        async with watching(env) as (tracker, task):
            before = tracker.readings[zed].bytes
            deliver(inbox, 6000)
            assert await until(lambda: tracker.readings[zed].bytes == before + 6000)
            assert tracker.readings[zed].state is State.OVER
            assert alive(task)

    asyncio.run(run())
