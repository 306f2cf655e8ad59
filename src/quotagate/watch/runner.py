"""Running the tracker: a baseline scan, inotify or polling, publishing changes, periodic rescans."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterable, Mapping

from quotagate.address import details_by_base, marked
from quotagate.config import Config, scan_lock_file
from quotagate.historian import WatchHistory
from quotagate.model import Mailbox, Reading, State
from quotagate.outage import Outage, left_problem
from quotagate.publish import PublishError, published_first
from quotagate.scan import ScanResult, log_transitions, run_scan
from quotagate.scanlock import LockError, LockHeld, scan_lock
from quotagate.store import Store, StoreError, redacted
from quotagate.watch.limits import current_limit, plan
from quotagate.watch.tracker import OUT_OF_WATCHES, Tracker

log = logging.getLogger(__name__)


class StorePublisher:
    """Writes the readings the tracker changed, with the over-quota flags that moved, and
    rewrites the published file when the over-quota set changed, or the mailboxes it marks as
    their own (see :func:`quotagate.address.shadowed`: one added or removed changes them)."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.over: set[str] = set()
        self.own: list[str] = []  # the mailboxes the published file marks as their own
        # Of every enabled mailbox (as a scan has them: the tracker leaves out those it cannot
        # follow), those whose name splits at a folder delimiter, by base: what the marks come from.
        self.details: dict[str, set[str]] = {}
        # The tracker's mailboxes (kept up to date by it): their limits go into the log lines.
        self.mailboxes: Mapping[str, Mailbox] = {}
        self.on_change: list[Callable[[list[Reading]], None]] = []
        self.history = WatchHistory(config)
        self._resets = 0  # how many times reset() ran: a commit it overlapped is done again

    def reset(self, readings: dict[str, Reading]) -> None:
        self.over = {a for a, r in readings.items() if r.state is State.OVER}
        self.details = details_by_base(readings, self.config.policy.folder_delimiter)
        self.own = marked(self.details, self.over)
        self._resets += 1

    async def __call__(self, changed: list[Reading], removed: list[str]) -> None:
        """Publish the file (when the set moved), then commit the store: on PublishError or
        StoreError nothing is committed, the file is as it was, and the caller keeps the batch.

        A rescan's :meth:`reset` may land while the batch is being committed (the commit runs in a
        thread): the rescan's file and flags, written meanwhile, and the batch's, computed against
        the set before it, then overwrite each other. The batch is committed again against the
        rescan's set, file included, so that neither the rescan's flags nor the batch's are lost.
        """
        again = False
        while True:
            resets = self._resets
            flags, over = self._flags(changed, removed)
            own, details = await asyncio.to_thread(self._commit, changed, removed, flags, over, again)
            if resets == self._resets:
                break
            again = True
        self.own, self.details, self.over = own, details, over
        readings = {r.address: r for r in changed if r.address in flags}
        log_transitions(flags, readings, {a: m.limits for a in flags if (m := self.mailboxes.get(a))})
        for hook in self.on_change:
            hook(changed)

    def _flags(self, changed: list[Reading], removed: list[str]) -> tuple[dict[str, bool], set[str]]:
        """The over-quota flags the batch moves, and the set once it is committed."""
        over = set(self.over)
        flags = {}
        for r in changed:
            is_over = r.state is State.OVER
            if is_over != (r.address in over):
                flags[r.address] = is_over
                (over.add if is_over else over.discard)(r.address)
        for address in removed:  # disabled or gone from the directory: never over quota
            if address in over:
                flags[address] = False
                over.discard(address)
        return flags, over

    def _commit(
        self, changed: list[Reading], removed: list[str], flags: dict[str, bool], over: set[str], again: bool
    ) -> tuple[list[str], dict[str, set[str]]]:
        """Publish (when the file's content moved, or ``again``: the batch committed once more over
        a rescan's file) and store; the marks and the detail-named mailboxes as they are once this
        batch is committed (the caller keeps them only then: a batch that failed is sent again,
        and must find what it changes still to do)."""
        # The marks move only with a flag, or a mailbox named like a detail coming or going: a
        # batch of changed readings costs nothing more (a user's churn must not cost the site).
        came = details_by_base((r.address for r in changed), self.config.policy.folder_delimiter)
        went = details_by_base(removed, self.config.policy.folder_delimiter)
        details = self.details
        if any(not ds <= details.get(b, set()) for b, ds in came.items()) or any(
            ds & details.get(b, set()) for b, ds in went.items()
        ):
            details = dict(details)  # the buckets that change are new sets: self.details stays
            for base in came.keys() | went.keys():
                details[base] = (details.get(base, set()) | came.get(base, set())) - went.get(base, set())
        own = marked(details, over) if flags or details is not self.details else self.own
        path = self.config.publish.file if again or flags or own != self.own else None
        with published_first(path, sorted(over), own):
            self.store.save_readings(changed, removed, flags)
        if not again:  # its samples are taken already
            self.history.after_batch(self.store, changed)
        return own, details


def estimated_watches(tracker: Tracker) -> int:
    """Root, cur/ and new/ of every folder, and each folder's own directory."""
    return sum(1 + 3 * len(r.usage.folders) for r in tracker.readings.values())


async def start_tracker(config: Config, store: Store) -> tuple[Tracker, StorePublisher]:
    """A tracker primed by an incremental scan, watching with inotify or polling as limits allow.

    When that scan is refused (the spool looks vanished) or cannot publish, the tracker starts
    from the stored readings: the last state stands until the spool is back.
    """
    result = await _rescan(config, store)
    readings = result.readings if result is not None else await asyncio.to_thread(store.readings)
    stored = result.stored if result is not None else readings
    publisher = StorePublisher(config, store)
    tracker = Tracker(config, publisher)
    mailboxes = await asyncio.to_thread(store.mailboxes)
    tracker.load(mailboxes, readings)
    publisher.mailboxes = tracker.mailboxes
    # Every enabled mailbox's reading, as the scan published them: the tracker leaves out those it
    # cannot follow, whose flags and marks the file must keep.
    enabled = {m.address for m in mailboxes if m.enabled}
    publisher.reset({a: r for a, r in stored.items() if a in enabled})
    chosen = plan(estimated_watches(tracker), current_limit(), config.watch.mode)
    tracker.mode = chosen.mode
    if chosen.mode == "inotify":
        try:
            tracker.start_watching()
        except OSError as exc:
            if exc.errno not in OUT_OF_WATCHES:
                raise
            log.warning("inotify ran out of watches (%s): polling folder mtimes instead", exc.strerror)
            tracker.mode = "poll"
    log.info(
        "watching %d mailboxes of %s by %s (%s)",
        len(tracker.mailboxes),
        redacted(config.store.url),
        tracker.mode,
        f"{tracker.watch_count()} watches" if tracker.mode == "inotify" else chosen.reason,
    )
    return tracker, publisher


async def rescan_forever(config: Config, store: Store, tracker: Tracker, publisher: StorePublisher) -> None:
    """Correct drift: an incremental scan every rescan_seconds, adopted by the tracker."""
    while True:
        await asyncio.sleep(config.watch.rescan_seconds)
        touched = tracker.begin_rescan()
        result = await _rescan(config, store)
        if result is None:
            continue  # the tracker keeps its state; its own flushes watch for the spool's return
        tracker.adopt(result.readings, touched)
        # What the store and the published file hold now is the rescan's view (with what the
        # tracker stored while it measured): the next flush writes the tracker's fresher
        # readings of the mailboxes touched meanwhile over it.
        publisher.reset(result.stored)
        gc.freeze()  # the long-lived readings: out of the collector's way


async def _rescan(config: Config, store: Store) -> ScanResult | None:
    """An incremental scan, or None (logged) when it was refused, could not publish or could not
    use the store. It holds the scan lock, as every scan does: while ``quotagate scan`` (the
    timer's) holds it, it waits, said once; a lock file that cannot be opened is said, and the
    scan runs without it."""
    path = scan_lock_file(config)
    waiting = False
    while True:
        try:
            with scan_lock(path):
                return await _scan(config, store)
        except LockHeld as exc:
            if not waiting:
                log.info("%s: the watch's scan waits for it", exc)
                waiting = True
            await asyncio.sleep(_LOCK_RETRY)
        except LockError as exc:
            log.warning("%s: the watch's scan runs without it", exc)
            return await _scan(config, store)


_LOCK_RETRY = 1.0  # seconds between tries for the scan lock


async def _scan(config: Config, store: Store) -> ScanResult | None:
    try:
        return await asyncio.to_thread(run_scan, config, store)
    except Outage as exc:
        log.error("rescan refused, keeping the last state: %s", exc)
    except PublishError as exc:
        log.error("rescan not stored, keeping the last state: %s", exc)
    except StoreError as exc:  # the store down or restarting: the next rescan tries again
        log.error("rescan could not use the store, keeping the last state: %s", exc)
    return None


def directory_problem(config: Config, tracker: Tracker, mailboxes: Iterable[Mailbox]) -> str | None:
    """Why a new listing of the directory looks like an outage (a bad LDAP filter, an emptied
    table: most mailboxes gone at once) rather than mailboxes leaving, or None."""
    wanted = {m.address for m in mailboxes if m.enabled}
    return left_problem(tracker.readings, tracker.readings.keys() - wanted, config.scan.max_vanished)


def _differences(store: Store, followed: dict[str, Mailbox]) -> tuple[list[Mailbox], set[str]]:
    """The directory's mailboxes that differ from those ``followed`` (added, or with new limits or
    paths), and those that left it or were disabled."""
    wanted = {m.address: m for m in store.mailboxes() if m.enabled}
    return [m for a, m in wanted.items() if followed.get(a) != m], followed.keys() - wanted.keys()


async def follow_directory(config: Config, store: Store, tracker: Tracker) -> None:
    """Mailboxes added to or removed from the directory are tracked or dropped within a while,
    unless too many go at once: then the tracker keeps them (said once) until the directory is back.

    The tracker gets only the mailboxes that differ from what it follows, found off the loop:
    loading every one again took the loop 0.9 s at 200,000 mailboxes, every ``directory_seconds``.
    """
    refused = None
    while True:
        await asyncio.sleep(config.watch.directory_seconds)
        try:  # a copy to compare with: the loop goes on changing the tracker's
            written, leaving = await asyncio.to_thread(_differences, store, dict(tracker.mailboxes))
        except StoreError as exc:
            log.error("cannot list mailboxes: %s", exc)
            continue
        problem = left_problem(tracker.readings, leaving, config.scan.max_vanished)
        if problem != refused:
            if problem:
                log.error("directory not followed, keeping the last state: %s", problem)
            else:
                log.info("directory followed again")
            refused = problem
        if problem is None:
            tracker.update(written, leaving)
