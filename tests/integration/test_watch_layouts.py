"""Watch (and serve with ``[watch] enabled``) over other admins' layouts: what it answers a
second after a change is what a full scan finds. A home given its Maildir by the first delivery;
an mbox home's nested folders, folders restored by a rename and folders deleted; a LAYOUT=fs
folder made below a directory that is no folder; a mailbox given a new path in the directory."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quotagate.decide import Reserved
from quotagate.model import Format, Limits, Mailbox, Reading, State
from quotagate.policy.reservations import Reservations, Transaction
from quotagate.store import open_store
from quotagate.usage import maildir as maildir_module
from quotagate.watch.tracker import _directories as tracker_directories
from quotagate.watch.watcher import Watcher
from tests.integration.scanenv import Env
from tests.integration.watchrun import until, watching

MBOX_HOMES = {"layout": "{local}/mail", "format": "mbox"}
_seq = [0]


def maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def deliver(folder: Path, size: int) -> Path:
    """As an MDA delivers: written in tmp/, renamed into new/, named with its size."""
    _seq[0] += 1
    name = f"1800000000.M{_seq[0]}P1.host,S={size}"
    (folder / "tmp" / name).write_bytes(b"x" * size)
    os.rename(folder / "tmp" / name, folder / "new" / name)
    return folder / "new" / name


def mbox_message(body_size: int) -> bytes:
    return b"From sender@example.net Mon Jan  1 00:00:00 2024\nSubject: hi\n\n" + b"x" * body_size + b"\n\n"


def append_mbox(path: Path, body_size: int) -> None:
    """As Exim's appendfile or dovecot-lda append to an mbox."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(mbox_message(body_size))


def mbox_home(env: Env, limit: int, folders: dict[str, int]) -> tuple[str, Path]:
    """alice's mbox home (``{local}/mail``), her limit and her folders (name: body size)."""
    env.configure(spool=MBOX_HOMES)
    address = env.add("alice", Limits(limit))
    home = env.spool / "alice" / "mail"
    for name, size in folders.items():
        append_mbox(home / name, size)
    return address, home


def full_scan(env: Env, address: str) -> Reading:
    return env.scan(full=True).readings[address]


def watched_then_scanned(
    env: Env,
    spool: dict[str, Any],
    address: str,
    change: Callable[[], object],
    until_state: State,
    before: State = State.OK,
) -> tuple[Reading, Reading]:
    """What watch reads once ``change`` made the mailbox ``until_state`` (from ``before``), and
    what a full scan reads then."""

    async def run() -> Reading:
        async with watching(env, spool=spool) as (tracker, _):
            assert tracker.readings[address].state is before
            change()
            await until(lambda: tracker.readings[address].state is until_state, seconds=8)
            return tracker.readings[address]

    watched = asyncio.run(run())
    return watched, full_scan(env, address)


def said(watched: Reading, scanned: Reading) -> str:
    return f"watch reads {watched.bytes} ({watched.state}), a full scan {scanned.bytes} ({scanned.state})"


@pytest.mark.parametrize(
    ("layout", "subdir"),
    [("{local}", "Maildir"), ("{domain}/{local}", ".maildir"), ("{domain}/{local}", "Maildir")],
)
def test_a_maildir_made_in_an_existing_home_by_the_first_delivery_is_seen_by_watch(
    env: Env, layout: str, subdir: str
) -> None:
    """Scenario: a home that exists already (useradd's skeleton, PostfixAdmin's directory)
    gets its Maildir (``maildir_subdir``) only at the first delivery; until then it is measured
    as an empty mbox home. Expected: watch sees the directory made, and the mail in it."""
    spool: dict[str, Any] = {"layout": layout, "maildir_subdir": subdir}
    env.configure(spool=spool)
    address = env.add("alice", Limits(1000))
    home = env.spool / ("alice" if layout == "{local}" else "example.org/alice")
    home.mkdir(parents=True)
    (home / ".profile").write_text("# skeleton\n")
    env.scan()

    watched, scanned = watched_then_scanned(
        env, spool, address, lambda: deliver(maildir(home / subdir), 2000), State.OVER
    )

    assert (scanned.bytes, scanned.usage.format) == (2000, Format.MAILDIR)
    assert (watched.bytes, watched.usage.format) == (2000, Format.MAILDIR)


def _into_nested_folder(home: Path, outside: Path) -> None:
    append_mbox(home / "Archive" / "2024", 3000)  # Sieve fileinto "Archive/2024"


def _restored_by_rename(home: Path, outside: Path) -> None:
    (outside / "Lists").write_bytes(mbox_message(3000))
    os.rename(outside / "Lists", home / "Lists")  # mv from the admin's restore area


@pytest.mark.parametrize("change", [_into_nested_folder, _restored_by_rename])
def test_mail_landing_in_an_mbox_home_outside_its_top_level_writes_is_seen_by_watch(
    env: Env, change: Callable[[Path, Path], None]
) -> None:
    """Scenario: in an mbox home, mail is appended to the nested folder ``Archive/2024``, or a
    folder is restored with ``mv`` into the home. Expected: watch sees both (every directory of
    the home watched, renames included), as a full scan counts them."""
    address, home = mbox_home(env, 2000, {"INBOX": 100})
    append_mbox(home / "Archive" / "2024", 100)
    outside = env.spool / "restore"
    outside.mkdir()
    env.scan()

    watched, scanned = watched_then_scanned(env, MBOX_HOMES, address, lambda: change(home, outside), State.OVER)

    assert (watched.bytes, watched.state) == (scanned.bytes, State.OVER), said(watched, scanned)


def test_an_mbox_folder_deleted_from_an_mbox_home_is_seen_by_watch(env: Env) -> None:
    """Scenario: a folder's mbox file is deleted from an mbox home (IMAP DELETE). Expected:
    watch no longer counts it, and the mailbox is no longer over."""
    address, home = mbox_home(env, 2000, {"INBOX": 100, "Old": 5000})
    env.scan()

    watched, scanned = watched_then_scanned(
        env, MBOX_HOMES, address, (home / "Old").unlink, State.OK, before=State.OVER
    )

    assert (watched.bytes, watched.state) == (scanned.bytes, State.OK), said(watched, scanned)


def test_a_delivery_into_a_new_folder_below_a_plain_parent_directory_is_seen_by_watch(env: Env) -> None:
    """Scenario: under LAYOUT=fs a user has ``Archive/2024``; ``Archive`` is a plain directory (no
    cur/, new/), as Dovecot leaves a parent it made. A Sieve ``fileinto :create "Archive/2025"``
    makes a folder below it and delivers there. Expected: watch sees the new folder and its mail
    (the directories between the root and a folder are watched, as the root is)."""
    spool = {"maildir_layout": "fs"}
    env.configure(spool=spool)
    address = env.add("alice", Limits(2000))
    root = env.maildir("alice")
    deliver(maildir(root), 100)
    deliver(maildir(root / "Archive" / "2024"), 100)
    env.scan()

    watched, scanned = watched_then_scanned(
        env, spool, address, lambda: deliver(maildir(root / "Archive" / "2025"), 3000), State.OVER
    )

    assert (scanned.bytes, scanned.state) == (3200, State.OVER)
    assert (watched.bytes, [f.name for f in watched.usage.folders]) == (3200, ["Archive/2024", "Archive/2025", "INBOX"])


def test_a_new_folder_in_an_existing_empty_directory_of_an_mbox_home_is_seen_by_watch(env: Env) -> None:
    """Scenario: an mbox home holds ``Projects/`` with no file yet (IMAP CREATE "Projects/");
    later ``Projects/2025`` is made and gets mail. Expected: watch sees it (every directory of
    the home watched, not only those holding a folder)."""
    address, home = mbox_home(env, 2000, {"INBOX": 100})
    (home / "Projects").mkdir()
    env.scan()

    watched, scanned = watched_then_scanned(
        env, MBOX_HOMES, address, lambda: append_mbox(home / "Projects" / "2025", 3000), State.OVER
    )

    assert (watched.bytes, watched.state) == (scanned.bytes, State.OVER), said(watched, scanned)


def test_a_new_layout_fs_folder_below_an_existing_plain_directory_is_seen_by_watch(env: Env) -> None:
    """Scenario: under LAYOUT=fs, ``Projects/`` is a plain directory with no folder below it yet;
    a Sieve ``fileinto :create "Projects/2025"`` makes one and delivers. Expected: watch sees it."""
    spool = {"maildir_layout": "fs"}
    env.configure(spool=spool)
    address = env.add("alice", Limits(2000))
    root = env.maildir("alice")
    deliver(maildir(root), 100)
    (root / "Projects").mkdir()
    env.scan()

    watched, scanned = watched_then_scanned(
        env, spool, address, lambda: deliver(maildir(root / "Projects" / "2025"), 3000), State.OVER
    )

    assert (scanned.bytes, scanned.state) == (3100, State.OVER)
    assert (watched.bytes, watched.state) == (3100, State.OVER), said(watched, scanned)


def test_mail_appended_to_a_child_of_inbox_in_an_mbox_home_is_seen_by_watch(env: Env) -> None:
    """Scenario: Dovecot keeps the mbox folder ``INBOX/Lists`` in the directory ``INBOX/`` of the
    home (INBOX itself elsewhere). Expected: ``INBOX/`` is watched as the directory it is, not
    taken for the root by its name, and mail appended there is seen."""
    address, home = mbox_home(env, 2000, {"Sent": 100})
    append_mbox(home / "INBOX" / "Lists", 100)
    env.scan()

    watched, scanned = watched_then_scanned(
        env, MBOX_HOMES, address, lambda: append_mbox(home / "INBOX" / "Lists", 3000), State.OVER
    )

    assert (watched.bytes, watched.state) == (scanned.bytes, State.OVER), said(watched, scanned)


def test_a_maildir_passed_over_in_an_mbox_home_does_not_spend_what_watch_may_watch(env: Env) -> None:
    """Attack: in an mbox home, the owner makes a Maildir ``M0/`` with 10,000 empty directories in
    its tmp/. They may be IMAP folders named so (Dovecot keeps mbox folders below ``M0/tmp/d1``):
    the scan leaves the mailbox unknown. Watch plans the home's watches walking it as the scan
    does, passing the Maildir over: ``Projects/`` is watched, none of those 10,000 directories."""
    address, home = mbox_home(env, 2000, {"inbox": 100})
    append_mbox(home / "Projects" / "big", 100)
    for sub in ("cur", "new", "tmp"):
        (home / "M0" / sub).mkdir(parents=True)
    for n in range(maildir_module.MAX_FOLDERS):
        (home / "M0" / "tmp" / f"d{n}").mkdir()

    assert not full_scan(env, address).usage.known
    root = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tracker_directories(root, True) == ["Projects"]
    finally:
        os.close(root)


def test_an_mbox_rewritten_by_its_client_releases_no_room_in_flight(env: Env) -> None:
    """Scenario: two messages for an mbox home were accepted and are on their way (in flight).
    The owner's client expunges a message from INBOX (the file rewritten, shorter) and rewrites
    Sent's flags in place. Expected: no delivery is sighted (an mbox written to is not one: a
    client's rewrite, a lock file, an open for writing look the same); both stay held."""
    address, home = mbox_home(env, 100_000, {"INBOX": 1000, "Sent": 100})
    env.scan()
    ledger = Reservations(seconds=600)
    start = time.time()
    for n in (1, 2):
        t = Transaction("192.0.2.1", f"t{n}")
        assert ledger.hold(t, address, 3000, start, 10**9, 100)
        ledger.end(t, with_data=True, now=start)

    async def run() -> None:
        async with watching(env, spool=MBOX_HOMES) as (tracker, _):

            def sighted(mailbox: str, size: int | None) -> None:
                ledger.delivered(mailbox, time.time(), size)

            tracker.on_delivery = sighted
            (home / "INBOX").write_bytes(mbox_message(1000))
            data = (home / "Sent").read_bytes()
            with open(home / "Sent", "r+b") as f:
                f.write(data)
            await asyncio.sleep(1.5)

    asyncio.run(run())
    later = time.time() + 1
    assert ledger.held(address, later, later) == Reserved(6000, 2)


def test_small_mail_watch_sees_land_frees_no_room_of_a_large_message_in_flight(env: Env) -> None:
    """Scenario: a 30,000-byte message for a Maildir is in flight when a 500-byte one the daemon
    never let in (cron's mail) lands, named with its size (S=). Expected: watch tells of the
    delivery with that size, and a reading after it still holds the 30,000 bytes; the message
    itself landing (30,400 bytes with the headers its delivery agent adds) frees them."""
    address = env.add("alice", Limits(100_000), path="example.org/alice")
    box = maildir(env.spool / "example.org" / "alice" / "Maildir")
    env.scan()
    ledger = Reservations(seconds=600)
    t = Transaction("192.0.2.1", "t1")
    assert ledger.hold(t, address, 30_000, time.time(), 10**9, 100)
    ledger.end(t, with_data=True, now=time.time())
    sighted: list[int | None] = []

    def seen(mailbox: str, size: int | None) -> None:
        sighted.append(size)
        ledger.delivered(mailbox, time.time(), size)

    async def land(size: int) -> None:
        async with watching(env) as (tracker, _):
            tracker.on_delivery = seen
            deliver(box, size)
            assert await until(lambda: sighted[-1:] == [size])

    asyncio.run(land(500))
    later = time.time() + 1
    assert ledger.held(address, later, later) == Reserved(30_000, 1)
    asyncio.run(land(30_400))
    later = time.time() + 1
    assert ledger.held(address, later, later) == Reserved()
    assert sighted == [500, 30_400]


def test_a_mailbox_given_a_new_path_is_measured_there_by_watch(env: Env) -> None:
    """Scenario: a mailbox's path in the directory changes (PostfixAdmin's ``maildir`` column)
    while watch follows the directory. Expected: it is measured, and watched, at its new place:
    never the new path with the old place's usage."""
    address = env.add("alice", Limits(2000), path="example.org/alice")
    old = maildir(env.spool / "example.org" / "alice" / "Maildir")
    deliver(old, 100)
    new = maildir(env.spool / "other.example" / "alice" / "Maildir")
    deliver(new, 3000)
    env.scan()

    config = env.configure(
        watch={"flush_seconds": 0.05, "poll_seconds": 0.1, "directory_seconds": 0.1}, scan={"racy_seconds": 0}
    )

    async def run() -> tuple[int, State, str]:
        # quotagate watch as it runs: following the directory (serve does the same from its refresh)
        watcher = Watcher(config, open_store(config.store.url), directory=True)
        try:
            tracker = await watcher.start()
            await asyncio.sleep(0.3)
            assert tracker.readings[address].bytes == 100
            env.store.upsert_mailboxes([Mailbox(address, Limits(2000), True, "other.example/alice")])
            await until(lambda: tracker.mailboxes[address].path == "other.example/alice", seconds=5)
            await until(lambda: tracker.readings[address].state is State.OVER, seconds=5)
            deliver(new, 500)
            await until(lambda: tracker.readings[address].bytes == 3500, seconds=5)
            r = tracker.readings[address]
            return r.bytes, r.state, r.path
        finally:
            await watcher.stop()

    watched = asyncio.run(run())
    scanned = full_scan(env, address)
    assert (scanned.bytes, scanned.state, scanned.path) == (3500, State.OVER, str(new))
    assert watched == (3500, State.OVER, str(new)), f"watch answers {watched}, a full scan (3500, over, {new})"
