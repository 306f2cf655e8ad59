"""A `quotagate scan` (cron, the timer, `--every`) running while `quotagate watch` flushes.

The scan reads the stored readings when it starts, measures (minutes on a big spool), then
writes what it measured and the over-quota file. A watch flush that lands in between is newer
than anything the scan measured, and a mailbox the admin disabled meanwhile is gone: the scan
must not write its older view over them. Before the fixes, each test below ended with the
store and the published file disagreeing, or both wrong, until the mailbox changed again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import quotagate.scan
from quotagate.config import scan_lock_file
from quotagate.model import Limits, Mailbox, State
from quotagate.outage import Outage
from quotagate.scan import run_scan
from quotagate.scanlock import scan_lock
from quotagate.store import StoreError, open_store
from quotagate.watch.runner import _rescan, rescan_forever, start_tracker
from quotagate.watch.tracker import Tracker
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder


class Pause:
    """Patches ``module.name`` so that its first call blocks (``entered`` set) until ``go_on``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.entered, self.go_on = threading.Event(), threading.Event()
        real: Callable[..., Any] = getattr(module, name)

        def paused(*args: Any, **kwargs: Any) -> Any:
            if not self.entered.is_set():
                self.entered.set()
                self.go_on.wait(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, paused)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result or exception lands in the list returned."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001  (handed to the test, which looks)
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def listed(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


def _site(env: Env) -> tuple[str, Path, Path]:
    alice = env.maildir("alice")
    add_message(maildir_folder(alice), 100)
    a = env.add("alice", Limits(1000))
    published = env.base / "over"
    env.configure(
        publish={"file": str(published)},
        scan={"workers": 1, "racy_seconds": 0},
        watch={"flush_seconds": 0.05, "poll_seconds": 0.1},
    )
    return a, alice, published


async def scan_beside(
    env: Env, monkeypatch: pytest.MonkeyPatch, tracker: Tracker, meanwhile: Callable[[], None], then: Callable[[], bool]
) -> None:
    """A scan (cron's: its own process, its own store connection) paused once it has measured;
    ``meanwhile`` and a watch flush, after which ``then()`` holds; the scan's end, and the watch
    going on (a few flushes: nothing changes on disk)."""
    scan_store = open_store(env.config.store.url)
    pause = Pause(monkeypatch, quotagate.scan, "vanished_problem")  # measured, not yet written
    thread, out = in_thread(lambda: run_scan(env.config, scan_store))
    assert await asyncio.to_thread(pause.entered.wait, 5)
    meanwhile()
    await tracker.flush()
    assert then()
    pause.go_on.set()
    await asyncio.to_thread(thread.join, 10)
    scan_store.close()
    assert not isinstance(out[0], BaseException), out
    for _ in range(3):
        await tracker.flush()


def test_a_scan_ending_after_a_watch_flush_unpublishes_a_mailbox_the_store_holds_full(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice is unchanged when the scan looks at her (it keeps her stored reading, 100 bytes, and
    writes nothing for her). Meanwhile she fills up and the watch stores and publishes her full.
    The scan then rewrites the published file from its own, older set: alice is gone from the
    file while the store's flag says full. The watch's publisher still believes the file holds
    her, so nothing puts her back until her flag moves again: Exim's lsearch lets mail in."""
    a, alice, published = _site(env)

    async def run() -> tuple[State, set[str]]:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            while tracker._dirty:
                await tracker.flush()

            def fill() -> None:  # a delivery fills alice; the watch sees it
                add_message(alice, 5000)
                tracker.mark_dirty(a)

            def published_full() -> bool:
                return a in listed(published) and env.store.readings()[a].state is State.OVER

            await scan_beside(env, monkeypatch, tracker, fill, published_full)
            return env.store.readings()[a].state, listed(published)
        finally:
            tracker.close()

    state, file = asyncio.run(run())
    assert state is State.OVER  # alice holds 5100 of 1000 bytes
    assert a in file, f"store says {state.name}, published file {sorted(file)}"


def test_a_scan_ending_after_a_watch_flush_writes_its_older_reading_over_the_newer(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice got 200 bytes the stored reading does not have yet (the scan measures her: 300,
    under quota). Then a delivery fills her and the watch stores and publishes her full (5300).
    The scan then commits its 300-byte reading over the watch's: the store and the file say
    alice has room, and the watch, whose reading did not change, never writes it again."""
    a, alice, published = _site(env)

    async def run() -> tuple[int, State, set[str]]:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            while tracker._dirty:
                await tracker.flush()
            # 200 bytes land just before the scan reads alice; the watch has not flushed them yet
            # (its flush comes with the next one below): the scan has a reading of alice to write.
            add_message(alice, 200)

            def fill() -> None:
                add_message(alice, 5000)
                tracker.mark_dirty(a)

            await scan_beside(env, monkeypatch, tracker, fill, lambda: env.store.readings()[a].bytes == 5300)
            r = env.store.readings()[a]
            return r.bytes, r.state, listed(published)
        finally:
            tracker.close()

    used, state, file = asyncio.run(run())
    assert (used, state) == (5300, State.OVER)
    assert a in file


def test_a_scan_that_fails_to_commit_puts_back_a_file_over_the_watchs_newer_one(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """published_first keeps the file as it stood before the scan wrote its own, to put it back
    should the store not commit. bob drifted over quota; the scan publishes {bob}, then its commit
    waits on the store (SQLite's busy timeout, a slow server) and fails. Meanwhile the watch
    publishes alice full ({alice}) and commits her flag. The scan's put-back then restores the
    file from before both ({}): the store holds alice full, the file does not list her, and the
    watch's publisher, believing it does, never writes it again while her set is unchanged."""
    a, alice, published = _site(env)
    bob = env.maildir("bob")
    add_message(maildir_folder(bob), 100)
    b = env.add("bob", Limits(1000))

    async def run() -> tuple[State, set[str]]:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            while tracker._dirty:
                await tracker.flush()
            add_message(bob, 5000)  # drift the scan finds (the watch's events are not read here)
            scan_store = open_store(env.config.store.url)
            pause = Pause(monkeypatch, scan_store, "save_readings")
            real_save = scan_store.save_readings

            def failing(*args: Any, **kwargs: Any) -> None:
                real_save(*args, **kwargs)  # waits on the pause first
                raise StoreError("database is locked")

            monkeypatch.setattr(scan_store, "save_readings", failing)
            thread, out = in_thread(lambda: run_scan(env.config, scan_store))
            assert await asyncio.to_thread(pause.entered.wait, 5)
            assert listed(published) == {b}  # the scan's file, its commit under way
            add_message(alice, 5000)
            tracker.mark_dirty(a)
            await tracker.flush()
            assert listed(published) == {a} and env.store.readings()[a].state is State.OVER
            pause.go_on.set()
            await asyncio.to_thread(thread.join, 10)
            assert isinstance(out[0], StoreError), out
            scan_store.close()
            for _ in range(3):
                await tracker.flush()
            return env.store.readings()[a].state, listed(published)
        finally:
            tracker.close()

    state, file = asyncio.run(run())
    assert state is State.OVER
    assert a in file, f"store says alice {state.name}, published file {sorted(file)}"


def test_a_mailbox_disabled_during_a_scan_comes_back_into_the_published_file(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice is full and published so. A scan starts (the directory as it was: alice enabled).
    The admin disables alice (`mailbox add --disabled`); the watch follows the directory, lets
    her go and clears her flag and her line in the file. The scan then ends and rewrites the
    file from its start-of-scan view: alice is listed full again although she is disabled and the
    store holds no reading of her; the watch has let her go and never clears it."""
    a, alice, published = _site(env)
    add_message(alice, 5000)

    async def run() -> tuple[object, set[str]]:
        tracker, _ = await start_tracker(env.config, env.store)
        try:
            while tracker._dirty:
                await tracker.flush()
            assert listed(published) == {a}
            disabled = Mailbox(a, Limits(1000), enabled=False)

            def disable() -> None:
                env.store.upsert_mailboxes([disabled])  # the admin
                tracker.update([disabled])  # follow_directory's step

            def let_go() -> bool:
                return listed(published) == set() and a not in env.store.readings()

            await scan_beside(env, monkeypatch, tracker, disable, let_go)
            return env.store.readings().get(a), listed(published)
        finally:
            tracker.close()

    reading, file = asyncio.run(run())
    assert a not in file, f"disabled {a} published over quota (stored reading: {reading})"


def test_the_watchs_scan_waits_for_the_scan_lock(env: Env) -> None:
    """Scenario: `quotagate scan` (the timer's) holds the scan lock when the watch's periodic
    rescan comes round. Expected: the rescan waits (it writes nothing meanwhile), then runs once
    the lock is free. Before the fix: the watch's scans took no lock; two scans committed their
    views, each taken from the store as it was when it started, in whatever order they ended."""
    alice = env.maildir("alice")
    add_message(maildir_folder(alice), 100)
    a = env.add("alice", Limits(1000))
    env.configure(scan={"workers": 1, "racy_seconds": 0})
    env.scan()
    add_message(alice, 5000)  # something for a scan to write

    async def run() -> None:
        with scan_lock(scan_lock_file(env.config)):
            rescan = asyncio.create_task(_rescan(env.config, env.store))
            await asyncio.sleep(1.5)
            assert not rescan.done() and env.store.readings()[a].bytes == 100
        result = await asyncio.wait_for(rescan, 10)
        assert result is not None and result.readings[a].bytes == 5100

    asyncio.run(run())


def test_a_directory_emptied_while_the_scan_measures_is_an_outage(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: the admin re-imports the directory (the table emptied, then filled again) while
    a scan measures. Expected: the scan is refused as an outage; nothing is removed, the file
    lists every full mailbox still. Before the fix (a review of the first version): the scan's
    second look at the directory was held to no max_vanished: every reading was removed and the
    published file emptied."""
    published = env.base / "over"
    env.configure(publish={"file": str(published)}, scan={"workers": 1, "racy_seconds": 0})
    addresses = []
    for i in range(20):
        add_message(maildir_folder(env.maildir(f"u{i}")), 5000)
        addresses.append(env.add(f"u{i}", Limits(1000)))
    env.scan()
    add_message(env.maildir("u0"), 10)  # something for the scan to measure
    pause = Pause(monkeypatch, quotagate.scan, "log_left_out")  # measured, its own vanished check passed
    thread, out = in_thread(lambda: run_scan(env.config, env.store))
    assert pause.entered.wait(10)
    env.store.upsert_mailboxes([Mailbox(a, Limits(1000), enabled=False) for a in addresses])  # "emptied"
    pause.go_on.set()
    thread.join(10)
    env.store.upsert_mailboxes([Mailbox(a, Limits(1000)) for a in addresses])  # and filled again
    assert isinstance(out[0], Outage), out
    assert len(env.store.readings()) == 20 and len(listed(published)) == 20


def test_a_full_mailbox_the_watch_stored_during_its_rescan_stays_published(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: while the watch's periodic rescan measures, the watch stores a new reading of a
    full mailbox (found by polling: no event marks it touched); later another mailbox fills up.
    Expected: both listed in the published file. Before the fix (a review of the first
    version): the rescan left that reading as the watch stored it but its result lacked it, so
    the publisher, reset from the result, took the mailbox for not full and the next flush
    published the file without it."""
    alice, bob = env.maildir("alice"), env.maildir("bob")
    add_message(maildir_folder(alice), 5000)
    add_message(maildir_folder(bob), 100)
    a, b = env.add("alice", Limits(1000)), env.add("bob", Limits(1000))
    published = env.base / "over"
    env.configure(
        publish={"file": str(published)},
        scan={"workers": 1, "racy_seconds": 0},
        watch={"flush_seconds": 0.05, "poll_seconds": 0.1, "rescan_seconds": 0.01},
    )

    async def run() -> set[str]:
        tracker, publisher = await start_tracker(env.config, env.store)
        try:
            while tracker._dirty:
                await tracker.flush()
            adopted = asyncio.Event()
            real_adopt = tracker.adopt

            def adopt(*args: Any) -> None:
                real_adopt(*args)
                adopted.set()

            monkeypatch.setattr(tracker, "adopt", adopt)
            pause = Pause(monkeypatch, quotagate.scan, "vanished_problem")  # measured, not yet written
            rescans = asyncio.create_task(rescan_forever(env.config, env.store, tracker, publisher))
            assert await asyncio.to_thread(pause.entered.wait, 5)
            add_message(alice, 200)  # still full; the watch finds it by polling and stores it
            await tracker._poll(True)
            await tracker.flush()
            assert env.store.readings()[a].bytes == 5200
            pause.go_on.set()
            await asyncio.wait_for(adopted.wait(), 10)
            rescans.cancel()
            await asyncio.gather(rescans, return_exceptions=True)
            add_message(bob, 5000)  # bob fills up: the watch publishes the new set
            tracker.mark_dirty(b)
            for _ in range(3):
                await tracker.flush()
            return listed(published)
        finally:
            tracker.close()

    assert asyncio.run(run()) == {a, b}
