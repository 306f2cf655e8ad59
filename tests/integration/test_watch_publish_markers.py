"""The watcher's published file: the 'address@' marks the lsearch lookup asks before it falls back
from john-doe@ to a full john@, kept up as mailboxes come and go (it published only when an
over-quota flag moved), and the lines of mailboxes it does not follow."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from quotagate import address
from quotagate.model import Limits, Mailbox, Reading
from quotagate.store import Store, StoreError
from quotagate.watch import runner
from quotagate.watch.runner import StorePublisher, start_tracker
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder

LIMITS = Limits(10_000, 0)


def _env(tmp_path: Path) -> Env:
    env = Env(tmp_path)
    env.configure(publish={"file": str(tmp_path / "overquota")}, policy={"folder_delimiter": "+-"})
    return env


def _lines(env: Env) -> list[str]:
    assert env.config.publish.file is not None
    return [line for line in env.config.publish.file.read_text().splitlines() if not line.startswith("#")]


def _full_beside_roomy(tmp_path: Path, full: str, roomy: str) -> Env:
    """Two mailboxes of LIMITS, ``full`` over them and ``roomy`` with 10 bytes, scanned."""
    env = _env(tmp_path)
    add_message(maildir_folder(env.maildir(full)), 10_001)
    add_message(maildir_folder(env.maildir(roomy)), 10)
    env.add(full, LIMITS)
    env.add(roomy, LIMITS)
    env.scan()
    return env


def test_a_mailbox_added_while_watching_gets_its_marker(tmp_path: Path) -> None:
    """john@ is full; john-doe@ (a mailbox with room) is added to the directory while the watcher
    runs. The tracker follows and measures it, but no flag moved, so the file is not rewritten:
    without 'john-doe@example.org@' the generated lsearch condition falls back to john@ and Exim
    refuses john-doe@, a mailbox with room, because another mailbox is full."""
    env = _env(tmp_path)
    add_message(maildir_folder(env.maildir("john")), 10_001)
    env.add("john", LIMITS)

    async def run() -> None:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            assert _lines(env) == [f"john@{DOMAIN}"]
            add_message(maildir_folder(env.maildir("john-doe")), 10)
            address = env.add("john-doe", LIMITS)
            tracker.update([Mailbox(address, LIMITS, True, None)])
            await tracker.flush()
            assert address in tracker.readings  # measured and stored
        finally:
            tracker.close()

    asyncio.run(run())
    assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]


def test_a_mailbox_removed_while_watching_loses_its_marker(tmp_path: Path) -> None:
    """john@ is full, john-doe@ has room: the file marks john-doe@. john-doe@ is then removed (or
    disabled); Exim's local_part_suffix router now delivers john-doe@ to john@. No flag moved, so
    the marker stays, the lsearch condition answers 'no' for john-doe@, and a remote sender gets
    past the full john@ until the next rescan."""
    env = _env(tmp_path)
    add_message(maildir_folder(env.maildir("john")), 10_001)
    add_message(maildir_folder(env.maildir("john-doe")), 10)
    env.add("john", LIMITS)
    gone = env.add("john-doe", LIMITS)

    async def run() -> None:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]
            env.store.upsert_mailboxes([Mailbox(gone, LIMITS, False, None)])  # disabled by the admin
            tracker.update([Mailbox(gone, LIMITS, False, None)])
            await tracker.flush()
            assert gone not in tracker.mailboxes
        finally:
            tracker.close()

    asyncio.run(run())
    assert _lines(env) == [f"john@{DOMAIN}"]


def test_the_watcher_keeps_the_marks_of_a_mailbox_it_does_not_follow(tmp_path: Path) -> None:
    """john@ is full; john-doe@ is an enabled mailbox whose path lies outside [spool] root (on a
    volume not in extra_roots): quotagate cannot measure it, and answers DUNNO for it (the daemon
    finds the mailbox, without usage; the SQL lookups find its row: 'no'). A scan gives it a
    reading and marks it in the published file ('john-doe@example.org@'). The watcher's tracker
    does not follow it (an unsafe path), and StorePublisher._commit builds the markers from
    tracker.mailboxes only: the first batch that rewrites the file (here: other@ goes over quota)
    drops the marker, and the generated lsearch lookup falls back from john-doe@ to the full
    john@ and refuses a mailbox quotagate knows nothing against, because another is full. The
    hourly rescan puts the marker back, the next flag change drops it again."""
    env = Env(tmp_path)
    env.configure(publish={"file": str(tmp_path / "overquota")}, policy={"folder_delimiter": "+-"})
    add_message(maildir_folder(env.maildir("john")), 10_001)
    add_message(maildir_folder(env.maildir("other")), 10)
    env.add("john", LIMITS)
    env.add("other", LIMITS)
    outside = tmp_path / "elsewhere" / "john-doe" / "Maildir"
    add_message(maildir_folder(outside), 10)
    env.add("john-doe", LIMITS, path=str(outside))

    async def run() -> None:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]  # the scan's view
            add_message(maildir_folder(env.maildir("other")), 10_001)
            tracker.mark_dirty(f"other@{DOMAIN}")
            await tracker.flush()
            assert tracker.readings[f"other@{DOMAIN}"].state.name == "OVER"
        finally:
            tracker.close()

    asyncio.run(run())
    env.close()
    assert _lines(env) == [f"john@{DOMAIN}", f"other@{DOMAIN}", f"john-doe@{DOMAIN}@"]


def test_the_watcher_keeps_the_line_of_a_full_mailbox_it_does_not_follow(tmp_path: Path) -> None:
    """far@ was measured full, then its path moved outside the spool: unknown, it keeps its flag,
    and the scan publishes it. The tracker cannot follow it; the first batch that rewrote the
    file (other@ going over) dropped far@'s line, and the lsearch lookup let its mail in."""
    env = _full_beside_roomy(tmp_path, "far", "other")
    env.add("far", LIMITS, path=str(tmp_path / "elsewhere" / "far" / "Maildir"))  # outside the spool

    async def run() -> None:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            assert _lines(env) == [f"far@{DOMAIN}"]  # unknown, kept over
            add_message(maildir_folder(env.maildir("other")), 10_001)
            tracker.mark_dirty(f"other@{DOMAIN}")
            await tracker.flush()
        finally:
            tracker.close()

    asyncio.run(run())
    env.close()
    assert _lines(env) == [f"far@{DOMAIN}", f"other@{DOMAIN}"]


def test_a_batch_that_moves_no_flag_and_no_mailbox_walks_no_other_mailbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user churning files in their own new/ makes a batch at every flush: it must cost
    what its readings cost, not a walk over every mailbox of the site (50,000 here; a million
    took ~0.45 s a batch when each one recomputed the marks)."""
    env = _env(tmp_path)
    add_message(maildir_folder(env.maildir("john")), 10_001)  # someone, somewhere, is over quota
    add_message(maildir_folder(env.maildir("eve")), 10)  # the user, with room
    env.add("john", LIMITS)
    eve = env.add("eve", LIMITS)
    env.scan()
    readings = env.store.readings()
    template = readings[eve]
    others = {f"u{i}-x@{DOMAIN}": replace(template, address=f"u{i}-x@{DOMAIN}") for i in range(50_000)}
    publisher = StorePublisher(env.config, env.store)
    publisher.reset({**readings, **others})
    walked, marks = [0], [0]
    real_details, real_marked = address.details_by_base, address.marked

    def details(addresses: Iterable[str], delimiters: str) -> dict[str, set[str]]:
        listed = list(addresses)
        walked[0] += len(listed)
        return real_details(listed, delimiters)

    def marked(details: Mapping[str, Collection[str]], over: Collection[str]) -> list[str]:
        marks[0] += 1
        return real_marked(details, over)

    monkeypatch.setattr(runner, "details_by_base", details)
    monkeypatch.setattr(runner, "marked", marked)
    try:
        for k in range(10):  # eve's files change: a few bytes more or less, no flag moves
            changed = [replace(readings[eve], bytes=10 + k % 2, measured_at=readings[eve].measured_at + k)]
            asyncio.run(publisher(changed, []))
    finally:
        env.close()
    assert walked[0] <= 10 and marks[0] == 0, (walked, marks)


def _john_full_beside_john_doe(tmp_path: Path) -> tuple[Env, dict[str, Reading]]:
    env = _full_beside_roomy(tmp_path, "john", "john-doe")
    return env, env.store.readings()


def _fail_once(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    real = store.save_readings
    calls = [0]

    def save(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise StoreError("database went away")
        real(*args, **kwargs)

    monkeypatch.setattr(store, "save_readings", save)


def test_added_detail_mailbox_marked_after_a_failed_commit_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, readings = _john_full_beside_john_doe(tmp_path)
    john, doe = f"john@{DOMAIN}", f"john-doe@{DOMAIN}"
    publisher = StorePublisher(env.config, env.store)
    publisher.reset({john: readings[john]})  # john-doe@ not yet followed
    assert env.config.publish.file is not None
    env.config.publish.file.write_text(f"john@{DOMAIN}\n")
    _fail_once(monkeypatch, env.store)

    async def run() -> None:
        with pytest.raises(StoreError):
            await publisher([readings[doe]], [])
        await publisher([readings[doe]], [])  # the tracker keeps the batch and gives it again

    asyncio.run(run())
    assert publisher.own == [doe]
    assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]


def test_removed_detail_mailbox_unmarked_after_a_failed_commit_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, readings = _john_full_beside_john_doe(tmp_path)
    doe = f"john-doe@{DOMAIN}"
    publisher = StorePublisher(env.config, env.store)
    publisher.reset(readings)
    assert publisher.own == [doe]
    assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]
    _fail_once(monkeypatch, env.store)

    async def run() -> None:
        with pytest.raises(StoreError):
            await publisher([], [doe])
        await publisher([], [doe])

    asyncio.run(run())
    assert publisher.own == []
    assert _lines(env) == [f"john@{DOMAIN}"]
