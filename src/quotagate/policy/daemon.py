"""``quotagate serve``: the policy server, its store refreshes, signals and metrics, put together."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from quotagate.config import Config, ConfigError, reservations_file
from quotagate.outage import left_problem
from quotagate.policy import control, shared, state
from quotagate.policy.listeners import Listener, serve_metrics
from quotagate.policy.live import MailboxChanges, Snapshot, SnapshotLoader
from quotagate.policy.metrics import Metrics
from quotagate.policy.server import PolicyServer
from quotagate.policy.service import PolicyService, rekeyed
from quotagate.policy.throttle import Throttled
from quotagate.sdnotify import notify, watchdog_interval
from quotagate.store import Store, StoreError, redacted, store_for
from quotagate.textfile import write_textfile
from quotagate.usage.folders import any_limits
from quotagate.watch.runner import directory_problem
from quotagate.watch.tracker import Tracker
from quotagate.watch.watcher import Watcher

log = logging.getLogger(__name__)

_HOUSEKEEPING_SECONDS = 5.0
_WORKER_HEARTBEAT_SECONDS = 1.0
# How long a thread of ours (a refresh, the read-ahead's list) may hold the interpreter while the
# event loop waits to answer: Python's default, 5 ms, is all a refresh may add to an answer.
SWITCH_INTERVAL = 0.001


@dataclass(frozen=True)
class WorkerRole:
    """One of the processes of ``serve --workers N`` (see :mod:`quotagate.policy.workers`): it
    serves the supervisor's sockets, tells the supervisor (not systemd) it is ready and alive,
    leaves its metrics in a file for the supervisor to serve, and only the first worker follows
    the spool ([watch]) and answers the control socket."""

    index: int
    listeners: list[Listener]
    report: Callable[[str], object]  # "READY=1", "WATCHDOG=1", as systemd would get them
    metrics_file: Path | None  # None: [policy] metrics off
    count: int = 1  # workers in all

    @property
    def first(self) -> bool:
        return self.index == 0


# What a reload cannot change in a running daemon: its sockets, its processes, its live tracking
# and its link to Redis are set up once, at start.
_SET_AT_START: dict[str, Callable[[Config], object]] = {
    "policy.listen": lambda c: c.policy.listen,
    "policy.socket_mode": lambda c: c.policy.socket_mode,
    "policy.socket_group": lambda c: c.policy.socket_group,
    "policy.metrics": lambda c: c.policy.metrics,
    "policy.control_socket": lambda c: c.policy.control_socket,
    "policy.state_file": lambda c: c.policy.state_file,
    "policy.workers": lambda c: c.policy.workers,
    "watch": lambda c: c.watch,
    "shared": lambda c: c.shared,
}


def restart_needed(old: Config, new: Config) -> list[str]:
    """The settings that changed between ``old`` and ``new`` that only a restart applies."""
    return [key for key, value in _SET_AT_START.items() if value(old) != value(new)]


class Daemon:
    def __init__(self, load_config: Callable[[], Config], worker: WorkerRole | None = None) -> None:
        self.load_config = load_config
        self.worker = worker
        self._notify: Callable[[str], object] = notify if worker is None else worker.report
        self.config = load_config()
        self.metrics = Metrics()
        self.service = PolicyService(self.config, self.metrics)
        if worker is not None:  # each worker watches maildirsize directories of its own
            self.service.files.share_watches(worker.count)
        self.shared = shared.attach(self.service, self.metrics)  # [shared] url: Redis; else None
        self.server = PolicyServer(self.service.respond, self.config.policy, self.metrics)
        self._store: Store | None = None
        self._stop = asyncio.Event()
        self.tracker: Tracker | None = None
        self._state_file = reservations_file(self.config)
        if worker is not None and not worker.first:  # each its own: they would overwrite each other's
            self._state_file = self._state_file.with_name(f"{self._state_file.name}.{worker.index}")
        self._saved_version = -1
        self._state_log = Throttled(log)
        self._control: asyncio.AbstractServer | None = None
        self._directory_refused: str | None = None
        self._followed: Tracker | None = None  # the tracker this daemon last handed a whole directory
        self._loader = SnapshotLoader()
        self._refreshing = asyncio.Lock()
        self._warm = True  # read maildirsize files ahead of requests after the next refresh

    def _load(self) -> Snapshot:
        if self._store is None:
            self._store = store_for(self.config.store)
        rules = self.config.folders
        return self._loader.load(
            self._store, with_readings=self.tracker is None, with_folders=any_limits(rules), folder_rules=rules
        )

    def _adopt(self, snapshot: Snapshot, changes: MailboxChanges | None = None) -> Snapshot:
        """With live tracking, usage comes from the tracker (fresher than the store); new or removed
        mailboxes from the store reach the tracker (``changes``: what the load changed in them,
        None for any of them).

        Going through every mailbox takes the loop 0.9 s at 200,000 of them: only at the first load
        (or one that cannot say what it changed), while the directory is refused, or when so many
        left it that it may be an outage.
        """
        if self.tracker is None:
            return snapshot
        tracker = self.tracker
        refused = self._directory_refused is not None  # whether it is back needs the whole directory
        # A tracker that took a directory other than this daemon's last one (a new tracker, after
        # the watch was started again, primed from its own read of the store) needs this one whole.
        behind = self._followed is not tracker
        if changes is not None and not refused and not behind:
            leaving = [*changes.removed, *(m.address for m in changes.written if not m.enabled)]
            if not leaving or left_problem(tracker.readings, leaving, self.config.scan.max_vanished) is None:
                tracker.update(changes.written, changes.removed)
                return self._live(snapshot)
        problem = directory_problem(self.config, tracker, snapshot.mailboxes.values())
        if problem != self._directory_refused:
            if problem:
                log.error("directory not followed, keeping the last state: %s", problem)
            else:
                log.info("the directory is followed again")
            self._directory_refused = problem
        if problem is None:  # a directory shrunk at once (a bad filter, an emptied table) clears no flag
            tracker.load(snapshot.mailboxes.values(), {})
        self._followed = tracker
        return self._live(snapshot)

    def _live(self, snapshot: Snapshot) -> Snapshot:
        tracker = self.tracker
        assert tracker is not None
        return replace(snapshot, readings=tracker.readings, source="watch", confirmed=lambda: tracker.confirmed_at)

    async def refresh(self) -> None:
        """Reload limits and usage from the store; on failure keep answering from what we have.

        One at a time (the timer, SIGHUP and a stopped tracker each ask for one): each load goes
        on from the one before, and the tracker must get each load's changes, in order.
        """
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            loaded = await asyncio.to_thread(self._load)
            self.service.snapshot = self._adopt(loaded, self._loader.mailbox_changes)
            gc.freeze()  # long-lived: keep them out of the collector's full passes (pauses)
            if self._warm:  # at start and after a reload: read every maildirsize ahead of requests
                self._warm = False
                files = self.service.files
                files.warm(await asyncio.to_thread(self.service.maildirsize_paths, files.watch_budget))
        except StoreError as exc:  # the store is down: keep answering from the last snapshot
            log.error("cannot refresh from the store: %s", exc)
            self._forget_store()
        except Exception:
            log.exception("cannot refresh from the store")
            self._forget_store()
            self._loader.forget()  # the tracker may have missed the last load's changes: all, next time
        self.housekeeping()

    def housekeeping(self) -> None:
        """Forget expired reservations and bring the gauges up to date."""
        now = time.time()
        reservations = self.service.reservations
        reservations.expire(now)
        totals = reservations.totals()
        self.metrics.reserved_bytes.set(totals["held"] + totals["flight"])
        self.metrics.inflight_bytes.set(totals["flight"])
        self.metrics.reserved_mailboxes.set(reservations.mailboxes())
        self.metrics.count_releases(reservations.released, reservations.capped)
        self.server.check_descriptors()
        loaded = self.service.snapshot.loaded_at
        self.metrics.snapshot_age.set(now - loaded if loaded else float("nan"))

    def _forget_store(self) -> None:
        """Drop the store connection: the next refresh opens a new one (the store may have moved)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.policy.refresh_seconds)
            await self.refresh()

    async def _housekeeping_forever(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_SECONDS)
            self.housekeeping()
            await self._save_reservations()

    async def _leave_metrics(self, path: Path) -> None:
        """A worker's metrics, for the supervisor to add up and serve (off the loop)."""
        try:
            await asyncio.to_thread(write_textfile, path, self.metrics.registry)
        except OSError as exc:
            self._state_log.warning("cannot leave metrics in %s: %s", path, exc.strerror or exc)

    async def _leave_metrics_forever(self, path: Path) -> None:
        """Every second: a worker killed outright loses at most its last second of counts."""
        while True:
            await self._leave_metrics(path)
            await asyncio.sleep(_WORKER_HEARTBEAT_SECONDS)

    async def _save_reservations(self) -> None:
        """Write the reservations to their file when they changed (off the loop); a file that
        cannot be written is logged, never fatal."""
        reservations = self.service.reservations
        if reservations.version == self._saved_version:
            return
        version, kept = reservations.version, list(reservations)
        try:
            await asyncio.to_thread(state.save, self._state_file, kept)
        except OSError as exc:
            self._state_log.warning("cannot keep reservations in %s: %s", self._state_file, exc.strerror or exc)
            return
        self._saved_version = version

    def _restore_reservations(self) -> None:
        if self.shared is not None:  # what it owed Redis when the daemon stopped: replayed first
            self.shared.keep_owed_at(self._state_file)
        saved = state.load(self._state_file)
        for r in saved:
            if r.copy and not r.folder:  # written before folders were kept: the copy names it
                r.folder = self.service.folder_of_copy(r.copy)
            elif r.folder:  # kept by the name an IMAP server shows, before folder keys were lowered
                r.folder = rekeyed(r.folder)
        kept = self.service.restore(saved, time.time())
        self._saved_version = self.service.reservations.version
        if kept:
            log.info("%d reservations restored from %s", kept, self._state_file)

    async def _watchdog_forever(self, interval: float) -> None:
        """Ping systemd's watchdog (a worker: its supervisor) from the event loop itself: a loop
        stuck in a blocking call stops the pings, and the daemon is restarted (WatchdogSec= in the
        unit; a worker's supervisor restarts it)."""
        while True:
            self._notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def reload(self) -> None:
        """SIGHUP: read the config again (a bad one is logged and ignored) and refresh."""
        self._notify("RELOADING=1")
        try:
            config = self.load_config()
        except ConfigError as exc:
            log.error("config not reloaded: %s", exc)
        else:
            changed = restart_needed(self.config, config)
            if changed:
                log.warning(
                    "%s changed: not taken by a reload; restart quotagate serve for it to take effect",
                    ", ".join(changed),
                )
            # Not while a load is in flight: it reads the config and the store, and its end would
            # write the old config's rows into the loader just forgotten.
            async with self._refreshing:
                self.config = config
                self.service.reconfigure(config)
                if self.shared is not None:  # room held in Redis from now on lives as long as here
                    self.shared.reservation_seconds = config.policy.reservation_seconds
                self.server.policy = config.policy
                await self.server.load_local_users()
                self._forget_store()
                self._loader.forget()
                self._warm = True
            log.info("config reloaded")
        await self.refresh()
        self._notify("READY=1")

    def stop(self) -> None:
        self._stop.set()

    async def _start_tracking(self) -> Watcher:
        """[watch] enabled: usage kept fresh from file-system events, inside the daemon."""
        started = time.time()
        watcher = Watcher(self.config, store_for(self.config.store), on_end=self._tracking_ended, tell=self._notify)
        try:
            tracker = await watcher.start()
        except BaseException:
            await watcher.stop()
            raise
        tracker.confirmed_at = started  # the baseline scan covered every mailbox
        self.tracker = tracker
        tracker.on_delivery = self.service.delivered
        if self.shared is not None and watcher.publisher is not None:
            # MX hosts weigh this host's readings as soon as they are made.
            watcher.publisher.on_change.append(self.shared.readings)
            self.shared.current = tracker.readings.values
        self.service.delivery_hint = tracker.mark_dirty
        self.service.snapshot = self._adopt(self.service.snapshot)
        return watcher

    def _tracking_ended(self, task: asyncio.Task[None]) -> None:
        """Live tracking failed: say so, and answer from the store again rather than from usage
        that no longer moves."""
        if task.cancelled() or task.exception() is None or self.tracker is None:
            return
        log.error("live usage tracking stopped: answering from the store", exc_info=task.exception())
        self.tracker = None
        self.service.delivery_hint = None
        asyncio.get_running_loop().create_task(self.refresh())

    async def run(self) -> None:
        self.service.files.begin()
        self._restore_reservations()
        if self.shared is not None:
            await self.shared.start()  # writes back what was restored
        await self.refresh()
        await self.service.files.ready()
        first = self.worker is None or self.worker.first
        watcher = await self._start_tracking() if self.config.watch.enabled and first else None
        if self.worker is None:
            # First: a port in use there leaves no unix socket behind.
            serve_metrics(self.config.policy.metrics, self.metrics.registry)
        bound = await self.server.start(None if self.worker is None else self.worker.listeners)
        if first:
            await self._start_control()
        log.info("%s", self._started_line(bound))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        background = [
            asyncio.create_task(self._refresh_forever()),
            asyncio.create_task(self._housekeeping_forever()),
        ]
        interval = watchdog_interval() if self.worker is None else _WORKER_HEARTBEAT_SECONDS
        if self.worker is not None and self.worker.metrics_file is not None:
            background.append(asyncio.create_task(self._leave_metrics_forever(self.worker.metrics_file)))
        if interval is not None:
            background.append(asyncio.create_task(self._watchdog_forever(interval)))
        self._notify("READY=1")
        await self._stop.wait()
        self._notify("STOPPING=1")
        log.info("stopping: draining connections")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if watcher is not None:
            await watcher.stop()
        await self.server.close()
        self.service.files.close()
        if self._control is not None:
            self._control.close()
        await self._save_reservations()
        if self.worker is not None and self.worker.metrics_file is not None:
            await self._leave_metrics(self.worker.metrics_file)  # the counts of its last second
        if self.shared is not None:
            await self.shared.close()
        self._forget_store()

    async def _start_control(self) -> None:
        """The control socket for `quotagate reservations`; the daemon serves without it."""
        path = self.config.policy.control_socket
        try:
            self._control = await control.serve(path, self.service.reservations, self.shared)
        except (OSError, control.ControlError) as exc:
            log.warning("no control socket at %s: %s (quotagate reservations cannot ask)", path, exc)

    def _started_line(self, bound: list[str]) -> str:
        """The one start-up line: which store, how many mailboxes, where it listens."""
        snapshot = self.service.snapshot
        mailboxes = f"{len(snapshot.mailboxes)} mailboxes" if snapshot.loaded_at else "no mailboxes yet (store down)"
        metrics = f", metrics on {self.config.policy.metrics}" if self.config.policy.metrics and not self.worker else ""
        live = ", usage live from the spool" if self.tracker is not None else ""
        who = "" if self.worker is None else f"worker {self.worker.index}: "
        store = redacted(self.config.store.url)
        return f"{who}serving {mailboxes} of {store}{live}: listening on {', '.join(bound)}{metrics}"


def serve(load_config: Callable[[], Config], worker: WorkerRole | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT (uvloop when installed)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        import uvloop
    except ImportError:
        asyncio.run(Daemon(load_config, worker).run())
        return

    async def main() -> None:
        await Daemon(load_config, worker).run()

    uvloop.run(main())
