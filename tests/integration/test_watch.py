"""The tracker on real directories with real inotify: usage follows the files, event by event."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from quotagate.accounting import FILES, PROFILES
from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox, Reading, State
from quotagate.scan import run_scan
from quotagate.store import open_store
from quotagate.usage.mailbox import Found
from quotagate.watch.deltas import message_delta
from quotagate.watch.limits import plan
from quotagate.watch.tracker import Tracker


def test_message_delta() -> None:
    assert message_delta("1.M1.h,S=120:2,S", True, FILES) == (120, 1)
    assert message_delta("1.M1.h,S=120", False, FILES) == (-120, -1)
    assert message_delta("1.M1.h:2,S", True, FILES) is None  # no size: read the folder
    assert message_delta(".hidden,S=5", True, FILES) == (0, 0)  # never counted


def test_message_delta_follows_the_accounting_profile() -> None:
    assert message_delta("1.M1.h,S=120,W=125", True, PROFILES["dovecot-count"]) == (125, 1)
    assert message_delta("1.M1.h,S=120", True, PROFILES["dovecot-count"]) is None  # the file is read
    assert message_delta("1.M1.h,S=120", True, PROFILES["exim"]) is None  # the file is stat'ed
    assert message_delta("1.M1.h,S=120:2,ST", True, PROFILES["courier"]) == (0, 0)  # flagged deleted
    assert message_delta("1.M1.h,S=120:2,S", False, PROFILES["courier"]) == (-120, -1)
    assert message_delta(".hidden,S=5", True, PROFILES["dovecot"]) == (5, 1)


def test_plan_falls_back_to_polling_when_watches_do_not_fit() -> None:
    assert plan(1000, 8192).mode == "inotify"
    low = plan(100_000, 8192)
    assert low.mode == "poll" and "max_user_watches" in low.reason
    assert plan(10, 8192, "poll").mode == "poll"
    assert plan(100_000, 8192, "inotify").mode == "inotify"
    assert plan(100_000, None).mode == "inotify"


class Spool:
    def __init__(self, root: Path, layout: str = "maildir++") -> None:
        self.root = root
        self.seq = 0
        self.layout = layout  # [spool] maildir_layout: where deliver() puts a folder

    def maildir(self, local: str) -> Path:
        return self.root / "example.org" / local / "Maildir"

    def deliver(self, local: str, size: int, folder: str = "", sized: bool = True, where: str = "new") -> Path:
        named = folder if self.layout == "fs" else f".{folder}"
        base = self.maildir(local) / (named if folder else "")
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.seq += 1
        name = f"1800000000.M{self.seq}P1.h" + (f",S={size}" if sized else "") + (":2,S" if where == "cur" else "")
        tmp = base / "tmp" / name
        tmp.write_bytes(b"x" * size)
        os.rename(tmp, base / where / name)  # how an MDA delivers: atomically, from tmp/
        return base / where / name


async def tracked(
    tmp_path: Path,
    steps: list,  # type: ignore[type-arg]
    check: list,  # type: ignore[type-arg]
    layout: str = "maildir++",
    folders: tuple[str, ...] = (),
) -> None:
    """Run ``steps`` on a spool the tracker watches, each followed by alice's (bytes, messages,
    state) in ``check``; alice starts with 100 bytes in INBOX and an empty folder for each of
    ``folders``."""
    spool = Spool(tmp_path / "spool", layout)
    spool.deliver("alice", 100)
    for folder in folders:
        for sub in ("cur", "new", "tmp"):
            (spool.maildir("alice") / (folder if layout == "fs" else f".{folder}") / sub).mkdir(parents=True)
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path}/q.db"},
            "spool": {"root": str(spool.root), "maildir_layout": layout},
            "watch": {"flush_seconds": 0.05},
            "scan": {"racy_seconds": 0},
        }
    )
    store = open_store(config.store.url)
    store.migrate()
    store.upsert_mailboxes([Mailbox("alice@example.org", Limits(1000))])
    result = run_scan(config, store)
    published: list[Reading] = []

    async def publish(changed: list[Reading], removed: list[str]) -> None:
        published.extend(changed)

    tracker = Tracker(config, publish)
    tracker.load(store.mailboxes(), result.readings)
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.sleep(0.2)  # watches in place, the initial measurement done
        for step, expected in zip(steps, check, strict=True):
            step(spool)
            for _ in range(100):
                await asyncio.sleep(0.02)
                r = tracker.readings["alice@example.org"]
                if (r.bytes, r.messages, r.state) == expected:
                    break
            else:
                raise AssertionError(f"{(r.bytes, r.messages, r.state)} != {expected}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    assert published


def test_usage_follows_deliveries_moves_and_deletions(tmp_path: Path) -> None:
    moved: list[Path] = []

    def deliver_sized(s: Spool) -> None:
        moved.append(s.deliver("alice", 300))

    def read_it(s: Spool) -> None:  # the IMAP server moves it from new/ to cur/ with a flag
        src = moved[0]
        os.rename(src, src.parent.parent / "cur" / (src.name + ":2,S"))

    def deliver_unsized(s: Spool) -> None:
        s.deliver("alice", 250, sized=False)

    def new_folder(s: Spool) -> None:
        s.deliver("alice", 400, folder="Archive.2024", where="cur")

    def drop_folder(s: Spool) -> None:
        shutil.rmtree(s.maildir("alice") / ".Archive.2024")

    def delete_all(s: Spool) -> None:
        for sub in ("cur", "new"):
            for f in (s.maildir("alice") / sub).iterdir():
                f.unlink()

    steps = [deliver_sized, read_it, deliver_unsized, new_folder, drop_folder, delete_all]
    check = [
        (400, 2, State.OK),
        (400, 2, State.OK),
        (650, 3, State.OK),
        (1050, 4, State.OVER),
        (650, 3, State.OK),
        (0, 0, State.OK),
    ]
    asyncio.run(tracked(tmp_path, steps, check))


def test_deliveries_into_dovecot_layout_fs_folders_are_tracked(tmp_path: Path) -> None:
    def to_sent(s: Spool) -> None:  # dovecot-lda -m Sent under LAYOUT=fs: Maildir/Sent/new
        s.deliver("alice", 300, folder="Sent")

    def to_nested(s: Spool) -> None:
        s.deliver("alice", 250, folder="Archive/2024")

    def new_folder(s: Spool) -> None:
        s.deliver("alice", 400, folder="Lists", where="cur")

    steps = [to_sent, to_nested, new_folder]
    check = [(400, 2, State.OK), (650, 3, State.OK), (1050, 4, State.OVER)]
    asyncio.run(tracked(tmp_path, steps, check, layout="fs", folders=("Sent", "Archive/2024")))


@pytest.mark.parametrize("count", [50])
def test_a_burst_is_one_batch(tmp_path: Path, count: int) -> None:
    def burst(s: Spool) -> None:
        for _ in range(count):
            s.deliver("alice", 10)

    asyncio.run(tracked(tmp_path, [burst], [(100 + 10 * count, 1 + count, State.OK)]))


def test_a_mailbox_created_by_its_first_delivery_is_picked_up(tmp_path: Path) -> None:
    def first_delivery(s: Spool) -> None:
        s.deliver("bob", 700)

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.root.mkdir()
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(spool.root)},
                "watch": {"flush_seconds": 0.05, "poll_seconds": 0.1},
            }
        )
        store = open_store(config.store.url)
        store.migrate()
        store.upsert_mailboxes([Mailbox("bob@example.org", Limits(500))])
        result = run_scan(config, store)

        async def publish(changed: list[Reading], removed: list[str]) -> None:
            pass

        tracker = Tracker(config, publish)  # inotify: nothing to watch yet, so it is polled
        tracker.load(store.mailboxes(), result.readings)
        task = asyncio.create_task(tracker.run())
        try:
            await asyncio.sleep(0.2)
            first_delivery(spool)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if tracker.readings["bob@example.org"].state is State.OVER:
                    break
            assert tracker.readings["bob@example.org"].bytes == 700
            assert tracker.readings["bob@example.org"].state is State.OVER
            assert tracker.watch_count() > 0  # and watched from now on
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            store.close()

    asyncio.run(main())


def test_mail_arriving_while_a_mailbox_is_measured_is_counted(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("carol", 100)
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(spool.root)},
                "watch": {"flush_seconds": 0.05},
            }
        )
        store = open_store(config.store.url)
        store.migrate()
        store.upsert_mailboxes([Mailbox("carol@example.org", Limits(10_000))])

        async def publish(changed: list[Reading], removed: list[str]) -> None:
            pass

        tracker = Tracker(config, publish)
        tracker.load(store.mailboxes(), {})  # nothing known: the first flush measures carol
        measure = tracker._measure_one
        delivered: list[Path] = []

        def measure_then_deliver(address: str) -> Found:
            result = measure(address)
            if not delivered:  # a delivery lands after the folder was listed, before the flush ends
                delivered.append(spool.deliver("carol", 300))
            return result

        tracker._measure_one = measure_then_deliver  # type: ignore[method-assign]
        task = asyncio.create_task(tracker.run())
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                reading = tracker.readings.get("carol@example.org")
                if delivered and reading is not None and reading.bytes == 400:
                    break
            assert tracker.readings["carol@example.org"].bytes == 400
            assert tracker.readings["carol@example.org"].messages == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            store.close()

    asyncio.run(main())


def test_a_mailbox_leaving_the_directory_loses_its_flag_and_hints_are_harmless(tmp_path: Path) -> None:
    from quotagate.watch.runner import StorePublisher

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("dora", 900)
        spool.deliver("erin", 10)
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(spool.root)},
                "publish": {"file": str(tmp_path / "over")},
            }
        )
        store = open_store(config.store.url)
        store.migrate()
        boxes = [Mailbox("dora@example.org", Limits(500)), Mailbox("erin@example.org", Limits(500))]
        store.upsert_mailboxes(boxes)
        result = run_scan(config, store)
        assert "dora@example.org" in (tmp_path / "over").read_text()
        publisher = StorePublisher(config, store)
        tracker = Tracker(config, publisher)
        tracker.load(boxes, result.readings)
        publisher.reset(tracker.readings)
        tracker.load([boxes[0].__class__("dora@example.org", Limits(500), enabled=False), boxes[1]], {})
        assert not tracker.mark_dirty("dora@example.org")  # a late delivery hint: ignored
        await tracker.flush()
        assert "dora@example.org" not in store.readings()
        assert "dora@example.org" not in (tmp_path / "over").read_text()
        store.close()

    asyncio.run(main())


def test_watch_logs_one_line_per_mailbox_going_over_or_back_under(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from quotagate.watch.runner import StorePublisher

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("dora", 900)
        spool.deliver("erin", 10)
        config = parse_config(
            {"store": {"url": f"sqlite:///{tmp_path}/q.db"}, "spool": {"root": str(spool.root)}, "scan": {"workers": 1}}
        )
        store = open_store(config.store.url)
        store.migrate()
        boxes = [Mailbox("dora@example.org", Limits(500)), Mailbox("erin@example.org", Limits(500, 3))]
        store.upsert_mailboxes(boxes)
        result = run_scan(config, store)
        publisher = StorePublisher(config, store)
        tracker = Tracker(config, publisher)
        tracker.load(boxes, result.readings)
        publisher.mailboxes = tracker.mailboxes
        publisher.reset(tracker.readings)
        caplog.set_level("INFO", logger="quotagate")
        caplog.clear()
        spool.deliver("erin", 600)
        for f in (spool.maildir("dora") / "new").iterdir():
            f.unlink()
        tracker.mark_dirty("erin@example.org")
        tracker.mark_dirty("dora@example.org")
        await tracker.flush()
        assert _transitions(caplog) == [
            "dora@example.org is back under quota: 0 of 500 bytes, 0 of unlimited messages",
            "erin@example.org is over quota: 610 of 500 bytes, 2 of 3 messages",
        ]
        caplog.clear()
        tracker.load([boxes[0], Mailbox("erin@example.org", Limits(500, 3), enabled=False)], {})
        await tracker.flush()
        assert _transitions(caplog) == ["erin@example.org is no longer over quota: disabled or gone from the directory"]
        store.close()

    asyncio.run(main())


def _transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "quota:" in r.getMessage()]


def test_watch_says_at_start_which_store_and_how_many_mailboxes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from quotagate.watch.runner import start_tracker

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("dora", 900)
        url = f"sqlite:///{tmp_path}/q.db"
        config = parse_config({"store": {"url": url}, "spool": {"root": str(spool.root)}, "watch": {"mode": "poll"}})
        store = open_store(url)
        store.migrate()
        store.upsert_mailboxes([Mailbox("dora@example.org", Limits(500)), Mailbox("erin@example.org", Limits(500))])
        caplog.set_level("INFO", logger="quotagate")
        await start_tracker(config, store)
        store.close()
        started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("watching")]
        assert started == [f"watching 2 mailboxes of {url} by poll (watch.mode = poll)"]

    asyncio.run(main())


def test_a_mailbox_symlinked_to_another_neither_steals_nor_removes_its_watches(tmp_path: Path) -> None:
    """inotify hands out one watch per directory: the owner of evil/ who points its Maildir at
    victim's gets victim's watch back. Victim's deliveries must still count for victim, before
    and after the symlink goes (removing evil's watch must not remove victim's)."""

    async def until(tracker: Tracker, address: str, expected: int) -> int:
        for _ in range(150):
            await asyncio.sleep(0.02)
            if tracker.readings[address].bytes == expected:
                break
        return tracker.readings[address].bytes

    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("victim", 100)
        spool.deliver("evil", 100)
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(spool.root)},
                "watch": {"flush_seconds": 0.05},
                "scan": {"racy_seconds": 0},
            }
        )
        store = open_store(config.store.url)
        store.migrate()
        store.upsert_mailboxes([Mailbox(f"{u}@example.org", Limits(10**6)) for u in ("victim", "evil")])
        result = run_scan(config, store)

        async def publish(changed: list[Reading], removed: list[str]) -> None:
            pass

        tracker = Tracker(config, publish)
        tracker.load(store.mailboxes(), result.readings)
        task = asyncio.create_task(tracker.run())
        victim, evil = "victim@example.org", "evil@example.org"
        try:
            await asyncio.sleep(0.3)
            shutil.rmtree(spool.maildir("evil"))
            spool.maildir("evil").symlink_to("../victim/Maildir")  # stays in the spool: followed
            assert await until(tracker, evil, 100) == 100  # evil now measures victim's folder
            for _ in range(3):
                spool.deliver("victim", 1000)
            assert await until(tracker, victim, 3100) == 3100
            spool.maildir("evil").unlink()  # evil's own reading waits for a rescan: its business
            spool.deliver("evil", 10)
            for _ in range(2):
                spool.deliver("victim", 1000)
            assert await until(tracker, victim, 5100) == 5100
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            store.close()

    asyncio.run(main())
