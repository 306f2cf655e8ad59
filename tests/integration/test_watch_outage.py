"""``quotagate watch`` (and the daemon's built-in watch) keep their last state when the spool
vanishes: no flush publishes mailboxes as empty, a refused rescan is logged and ignored."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from msgspec.structs import replace

from quotagate.config import Config, parse_config
from quotagate.model import Limits, Mailbox, Reading, State
from quotagate.policy.daemon import Daemon
from quotagate.policy.live import MailboxChanges, Snapshot
from quotagate.scan import run_scan
from quotagate.store import Store, open_store
from quotagate.watch.runner import start_tracker
from quotagate.watch.tracker import Tracker
from quotagate.watch.watcher import Watcher
from tests.spoolgen import add_message, maildir_folder

LOCALS = ["a0", "a1", "b0", "b1"]  # a* over quota, b* not


def build(tmp_path: Path) -> tuple[Config, Store]:
    spool = tmp_path / "spool"
    for local in LOCALS:
        add_message(maildir_folder(spool / "example.org" / local / "Maildir"), 100)
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path}/q.db"},
            "spool": {"root": str(spool)},
            "publish": {"file": str(tmp_path / "overquota")},
            "scan": {"racy_seconds": 0},
            "watch": {"flush_seconds": 0.05, "poll_seconds": 0.1, "rescan_seconds": 0.3, "directory_seconds": 0.1},
        }
    )
    store = open_store(config.store.url)
    store.migrate()
    store.upsert_mailboxes(
        [Mailbox(f"{local}@example.org", Limits(50 if local[0] == "a" else 10**6)) for local in LOCALS]
    )
    return config, store


def delete_mailboxes(config: Config, like: str) -> None:
    """What an admin's DELETE does to the directory (quotagate's own store has no such call)."""
    engine = sa.create_engine(config.store.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM quotagate_mailbox WHERE address LIKE :like"), {"like": like})
    engine.dispose()


async def refreshed_daemon(config: Config, store: Store) -> tuple[Daemon, Tracker]:
    """A daemon with its built-in watch, after its first refresh."""
    tracker, _ = await start_tracker(config, store)
    daemon = Daemon(lambda: config)
    daemon.tracker = tracker
    await daemon.refresh()
    return daemon, tracker


def seen(store: Store, config: Config) -> tuple[dict[str, Any], str]:
    assert config.publish.file is not None
    return {a: (r.state, r.bytes) for a, r in store.readings().items()}, config.publish.file.read_text()


async def watching(
    config: Config, store: Store, then: Callable[[Tracker], Awaitable[None]], directory: bool = False
) -> None:
    """Run the watch as ``quotagate watch`` does (following the directory if asked) while ``then`` runs."""
    watcher = Watcher(config, store, directory=directory)
    try:
        tracker = await watcher.start()
        await asyncio.sleep(0.3)
        await then(tracker)
    finally:
        await watcher.stop()


@pytest.mark.slow
def test_watch_keeps_its_state_and_published_file_when_the_spool_root_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, store = build(tmp_path)
    caplog.set_level(logging.INFO)

    async def remove_the_root(tracker: Tracker) -> None:
        before = seen(store, config)
        assert before[1].count("@example.org") == 2
        shutil.rmtree(config.spool.root)  # every watch ends: every mailbox is measured again
        for local in LOCALS:
            tracker.mark_dirty(f"{local}@example.org")
        await asyncio.sleep(1.5)  # many flushes, several rescans
        assert seen(store, config) == before
        assert {a: r.state for a, r in tracker.readings.items()} == {
            f"{local}@example.org": State.OVER if local[0] == "a" else State.OK for local in LOCALS
        }

    asyncio.run(watching(config, store, remove_the_root))
    messages = [(r.name, r.getMessage()) for r in caplog.records if "spool root" in r.getMessage()]
    assert len([m for name, m in messages if name == "quotagate.watch.tracker"]) == 1  # said once, not per flush
    assert any(name == "quotagate.watch.runner" and "rescan refused" in m for name, m in messages)

    before = seen(store, config)
    asyncio.run(watching(config, store, lambda tracker: asyncio.sleep(0.3)))  # starting with the root gone
    assert seen(store, config) == before
    store.close()


@pytest.mark.slow
def test_watch_keeps_mailboxes_when_half_the_directory_goes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, store = build(tmp_path)

    async def shrink_the_directory(tracker: Tracker) -> None:
        before = seen(store, config)
        delete_mailboxes(config, "a%")
        await asyncio.sleep(0.6)  # several directory refreshes
        assert seen(store, config) == before
        assert len(tracker.mailboxes) == 4

    asyncio.run(watching(config, store, shrink_the_directory, directory=True))
    assert any("vanished" in r.getMessage() for r in caplog.records)
    store.close()


@pytest.mark.slow
def test_watch_follows_mailboxes_added_disabled_and_given_new_limits(tmp_path: Path) -> None:
    """``quotagate watch``'s directory task hands the tracker what differs from what it follows."""
    config, store = build(tmp_path)
    add_message(maildir_folder(tmp_path / "spool" / "example.org" / "c0" / "Maildir"), 100)

    async def change_the_directory(tracker: Tracker) -> None:
        store.upsert_mailboxes(
            [
                Mailbox("c0@example.org", Limits(10)),
                Mailbox("b1@example.org", Limits(10**6), enabled=False),
                Mailbox("b0@example.org", Limits(60)),
            ]
        )
        await asyncio.sleep(0.4)  # several directory passes
        assert sorted(tracker.mailboxes) == ["a0@example.org", "a1@example.org", "b0@example.org", "c0@example.org"]
        assert tracker.mailboxes["b0@example.org"].limits == Limits(60)

    asyncio.run(watching(config, store, change_the_directory, directory=True))
    store.close()


def test_a_batch_watch_cannot_publish_is_not_stored_and_is_written_once_it_can(
    tmp_path: Path, read_only: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    publish_dir = tmp_path / "exim"
    publish_dir.mkdir()
    config, store = build(tmp_path)
    config = replace(config, publish=replace(config.publish, file=publish_dir / "over"))
    spool = config.spool.root

    async def run() -> None:
        tracker, _ = await start_tracker(config, store)
        before = seen(store, config)
        read_only(publish_dir)
        add_message(maildir_folder(spool / "example.org" / "b0" / "Maildir"), 10**6)  # b0 goes over quota
        tracker.mark_dirty("b0@example.org")
        for _ in range(3):
            assert await tracker.flush() == []
        assert seen(store, config) == before  # neither the flag nor the reading: the file could not say so
        subprocess.run(["umount", str(publish_dir)], check=True)
        assert [r.address for r in await tracker.flush()] == ["b0@example.org"]
        readings, published = seen(store, config)
        assert readings["b0@example.org"][0] is State.OVER and "b0@example.org" in published
        tracker.close()

    asyncio.run(run())
    assert len([r for r in caplog.records if "cannot store or publish" in r.getMessage()]) == 1
    store.close()


def test_the_daemon_keeps_tracking_mailboxes_when_half_the_directory_goes(tmp_path: Path) -> None:
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> int:
        tracker, _ = await start_tracker(config, store)
        daemon = Daemon(lambda: config)
        daemon.tracker = tracker
        kept = {m.address: m for m in store.mailboxes() if m.address.startswith("b")}
        daemon._adopt(Snapshot(kept, {}, 0.0, 0.0))  # the store's refresh lists half of them
        tracker.close()
        return len(tracker.mailboxes)

    assert asyncio.run(main()) == 4
    store.close()


def test_the_daemons_refresh_hands_the_tracker_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handing every mailbox to the tracker takes the loop 0.9 s at 200,000 mailboxes: a refresh
    hands it only the mailboxes written or removed since, a disabled one included (it leaves),
    even when the store read every mailbox again (a row deleted by hand; an admin's table, always);
    the first load hands it every one."""
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> tuple[list[list[str]], list[tuple[list[str], list[str]]], dict[str, Mailbox]]:
        tracker, _ = await start_tracker(config, store)
        loaded: list[list[str]] = []
        updated: list[tuple[list[str], list[str]]] = []
        load, update = tracker.load, tracker.update

        def counted_load(mailboxes: Iterable[Mailbox], readings: dict[str, Reading]) -> None:
            mailboxes = list(mailboxes)
            loaded.append(sorted(m.address for m in mailboxes))
            load(mailboxes, readings)

        def counted_update(written: Iterable[Mailbox], removed: Iterable[str] = ()) -> None:
            written, removed = list(written), list(removed)
            updated.append((sorted(m.address for m in written), sorted(removed)))
            update(written, removed)

        monkeypatch.setattr(tracker, "load", counted_load)
        monkeypatch.setattr(tracker, "update", counted_update)
        daemon = Daemon(lambda: config)
        daemon.tracker = tracker
        await daemon.refresh()  # the first load: every mailbox
        store.save_readings([], [])
        await daemon.refresh()  # nothing in the directory changed
        store.upsert_mailboxes([Mailbox("c0@example.org", Limits(10)), Mailbox("a0@example.org", Limits(70))])
        await daemon.refresh()
        store.upsert_mailboxes([Mailbox("b1@example.org", Limits(10**6), enabled=False)])  # it leaves
        await daemon.refresh()
        delete_mailboxes(config, "c0@%")  # by hand: the store reads every mailbox again
        await daemon.refresh()
        tracker.close()
        return loaded, updated, dict(tracker.mailboxes)

    loaded, updated, tracked = asyncio.run(main())
    assert loaded == [[f"{local}@example.org" for local in LOCALS]]
    assert updated == [
        ([], []),
        (["a0@example.org", "c0@example.org"], []),
        (["b1@example.org"], []),
        ([], ["c0@example.org"]),
    ]
    assert sorted(tracked) == ["a0@example.org", "a1@example.org", "b0@example.org"]
    assert tracked["a0@example.org"].limits == Limits(70)
    store.close()


def test_a_mailbox_a_refresh_says_was_removed_is_no_longer_tracked(tmp_path: Path) -> None:
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> list[str]:
        daemon, tracker = await refreshed_daemon(config, store)
        daemon._adopt(daemon.service.snapshot, MailboxChanges([], ["b0@example.org"]))
        tracker.close()
        return sorted(tracker.mailboxes)

    assert asyncio.run(main()) == ["a0@example.org", "a1@example.org", "b1@example.org"]
    store.close()


def test_a_new_tracker_gets_the_whole_directory_at_the_next_refresh(tmp_path: Path) -> None:
    """The watch started again (its tracker ended) primes a new tracker from its own read of the
    store, which may list other mailboxes than the daemon's last load: the next refresh hands it
    the whole directory, not only what changed since that load."""
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> list[str]:
        daemon, tracker = await refreshed_daemon(config, store)
        tracker.close()
        fresh, _ = await start_tracker(config, store)
        fresh.load([m for m in store.mailboxes() if m.address != "b0@example.org"], {})  # read a moment apart
        daemon.tracker = fresh
        store.upsert_mailboxes([Mailbox("c0@example.org", Limits(10))])
        await daemon.refresh()
        fresh.close()
        return sorted(fresh.mailboxes)

    assert asyncio.run(main()) == sorted([*(f"{local}@example.org" for local in LOCALS), "c0@example.org"])
    store.close()


def test_a_rescan_updates_readings_and_leaves_the_directory_to_who_follows_it(tmp_path: Path) -> None:
    """The rescan's store may list other mailboxes (its config from before a SIGHUP, a moment
    apart): it brings the tracked mailboxes' readings up to date and tracks no other, drops none."""
    config, store = build(tmp_path)

    async def main() -> tuple[list[str], int]:
        tracker, _ = await start_tracker(config, store)
        tracker.load([m for m in store.mailboxes() if m.address != "b0@example.org"], {})
        add_message(maildir_folder(tmp_path / "spool" / "example.org" / "a1" / "Maildir"), 1000)
        store.upsert_mailboxes([Mailbox("c0@example.org", Limits(10))])
        result = run_scan(config, store)
        tracker.adopt(result.readings, set())
        tracker.close()
        return sorted(tracker.mailboxes), tracker.readings["a1@example.org"].bytes

    tracked, a1_bytes = asyncio.run(main())
    assert tracked == ["a0@example.org", "a1@example.org", "b1@example.org"]
    assert a1_bytes == 1100
    store.close()


def test_a_refresh_that_loses_half_the_directory_keeps_tracking_it(tmp_path: Path) -> None:
    """Mailboxes leaving one by one are let go at each refresh; half the directory leaving at once
    (a bad filter, an emptied table) looks like an outage: the tracker keeps following every one
    until the directory is back, as after a full load."""
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> tuple[int, str | None, int, str | None]:
        daemon, tracker = await refreshed_daemon(config, store)
        store.upsert_mailboxes([Mailbox(f"{local}@example.org", Limits(10), enabled=False) for local in ("a0", "a1")])
        await daemon.refresh()
        during = len(tracker.mailboxes), daemon._directory_refused
        store.upsert_mailboxes([Mailbox(f"{local}@example.org", Limits(10)) for local in ("a0", "a1")])
        await daemon.refresh()
        tracker.close()
        return (*during, len(tracker.mailboxes), daemon._directory_refused)

    tracked, refused, back, after = asyncio.run(main())
    assert tracked == 4 and refused is not None and "2 of 4 measured mailboxes vanished" in refused
    assert back == 4 and after is None
    store.close()


def test_refreshes_asked_at_once_hand_the_tracker_every_loads_changes(tmp_path: Path) -> None:
    """The timer, SIGHUP and a stopped tracker may each start a refresh while one is loading: each
    load goes on from the one before, so the tracker must get each one's changes, in order."""
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> set[str]:
        daemon, tracker = await refreshed_daemon(config, store)
        load, loading = daemon._load, threading.Event()

        def slow_load() -> Snapshot:
            loaded = load()
            loading.set()
            time.sleep(0.5)  # a second refresh is asked meanwhile; its load must not overtake this one
            return loaded

        daemon._load = slow_load  # type: ignore[method-assign]
        store.upsert_mailboxes([Mailbox("new1@example.org", Limits(10))])
        first = asyncio.create_task(daemon.refresh())
        await asyncio.to_thread(loading.wait, 5)
        store.upsert_mailboxes([Mailbox("new2@example.org", Limits(10))])
        daemon._load = load  # type: ignore[method-assign]
        await asyncio.gather(first, daemon.refresh())
        tracker.close()
        return {address for address in tracker.mailboxes if address.startswith("new")}

    assert asyncio.run(main()) == {"new1@example.org", "new2@example.org"}
    store.close()


def test_a_reload_waits_for_the_load_in_flight(tmp_path: Path) -> None:
    """SIGHUP during a refresh's load: the reload forgets the loader and the store only once that
    load is adopted, or the load's end writes the old config's rows into the loader just forgotten."""
    config, store = build(tmp_path)
    config = replace(config, watch=replace(config.watch, enabled=True))

    async def main() -> list[str]:
        daemon, tracker = await refreshed_daemon(config, store)
        events: list[str] = []
        load, loading = daemon._load, threading.Event()
        forget = daemon._loader.forget

        def slow_load() -> Snapshot:
            loaded = load()
            loading.set()
            time.sleep(0.3)
            events.append("loaded")
            return loaded

        def forgotten() -> None:
            events.append("forgotten")
            forget()

        daemon._load = slow_load  # type: ignore[method-assign]
        daemon._loader.forget = forgotten  # type: ignore[method-assign]
        first = asyncio.create_task(daemon.refresh())
        await asyncio.to_thread(loading.wait, 5)
        await asyncio.gather(first, daemon.reload())
        tracker.close()
        return events

    assert asyncio.run(main())[:2] == ["loaded", "forgotten"]
    store.close()
