"""Running the tracker: a baseline scan, inotify or polling, publishing changes, periodic rescans."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
from collections.abc import Callable

from quotagate.config import Config
from quotagate.model import Reading, State
from quotagate.publish import publish_file
from quotagate.scan import run_scan
from quotagate.store import Store, StoreError
from quotagate.watch.limits import current_limit, plan
from quotagate.watch.tracker import Tracker

log = logging.getLogger(__name__)


class StorePublisher:
    """Writes the readings the tracker changed, with the over-quota flags that moved, and
    rewrites the published file when the over-quota set changed."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.over: set[str] = set()
        self.on_change: list[Callable[[list[Reading]], None]] = []

    def reset(self, readings: dict[str, Reading]) -> None:
        self.over = {a for a, r in readings.items() if r.state is State.OVER}

    async def __call__(self, changed: list[Reading], removed: list[str]) -> None:
        flags = {}
        for r in changed:
            over = r.state is State.OVER
            if over != (r.address in self.over):
                flags[r.address] = over
                (self.over.add if over else self.over.discard)(r.address)
        for address in removed:  # disabled or gone from the directory: never over quota
            if address in self.over:
                flags[address] = False
                self.over.discard(address)
        await asyncio.to_thread(self.store.save_readings, changed, removed, flags)
        if flags:
            log.info(
                "over quota now: %s; no longer: %s",
                sorted(a for a, o in flags.items() if o) or "-",
                sorted(a for a, o in flags.items() if not o) or "-",
            )
            if self.config.publish.file is not None:
                await asyncio.to_thread(publish_file, self.config.publish.file, sorted(self.over))
        for hook in self.on_change:
            hook(changed)


def estimated_watches(tracker: Tracker) -> int:
    """Root, cur/ and new/ of every folder, and each folder's own directory."""
    return sum(1 + 3 * len(r.usage.folders) for r in tracker.readings.values())


async def start_tracker(config: Config, store: Store) -> tuple[Tracker, StorePublisher]:
    """A tracker primed by an incremental scan, watching with inotify or polling as limits allow."""
    result = await asyncio.to_thread(run_scan, config, store)
    publisher = StorePublisher(config, store)
    tracker = Tracker(config, publisher)
    mailboxes = await asyncio.to_thread(store.mailboxes)
    tracker.load(mailboxes, result.readings)
    publisher.reset(tracker.readings)
    chosen = plan(estimated_watches(tracker), current_limit(), config.watch.mode)
    tracker.mode = chosen.mode
    if chosen.mode == "inotify":
        try:
            tracker.start_watching()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            log.warning("inotify ran out of watches (%s): polling folder mtimes instead", exc.strerror)
            tracker.mode = "poll"
    log.info(
        "watching %d mailboxes by %s (%s)",
        len(tracker.mailboxes),
        tracker.mode,
        f"{tracker.watch_count()} watches" if tracker.mode == "inotify" else chosen.reason,
    )
    return tracker, publisher


async def rescan_forever(config: Config, store: Store, tracker: Tracker, publisher: StorePublisher) -> None:
    """Correct drift: an incremental scan every rescan_seconds, adopted by the tracker."""
    while True:
        await asyncio.sleep(config.watch.rescan_seconds)
        touched = tracker.begin_rescan()
        result = await asyncio.to_thread(run_scan, config, store)
        mailboxes = await asyncio.to_thread(store.mailboxes)
        tracker.adopt(mailboxes, result.readings, touched)
        # What the store and the published file hold now is the rescan's view: the next flush
        # writes the tracker's fresher readings of the mailboxes touched meanwhile over it.
        publisher.reset(result.readings)
        gc.freeze()  # the long-lived readings: out of the collector's way


async def follow_directory(config: Config, store: Store, tracker: Tracker) -> None:
    """Mailboxes added to or removed from the directory are tracked or dropped within a while."""
    while True:
        await asyncio.sleep(config.watch.directory_seconds)
        try:
            mailboxes = await asyncio.to_thread(store.mailboxes)
        except StoreError as exc:
            log.error("cannot list mailboxes: %s", exc)
            continue
        tracker.load(mailboxes, {})
