"""Live usage tracking put together, the one way ``quotagate watch`` and ``quotagate serve`` run it:
a tracker primed by a scan, its tasks (file-system events, the periodic rescan and, for ``watch``,
the directory) and the store they write to, started and stopped as one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from quotagate.config import Config
from quotagate.sdnotify import asking_more_time, notify
from quotagate.store import Store
from quotagate.watch.runner import StorePublisher, follow_directory, rescan_forever, start_tracker
from quotagate.watch.tracker import Tracker

TaskEnded = Callable[[asyncio.Task[None]], None]


class Watcher:
    """Owns ``store`` from here on: :meth:`stop` closes it.

    ``directory``: follow mailboxes added to or removed from the directory (``serve`` does that
    with its own refreshes). ``on_end``: called with each task that ends, cancelled or failed.
    ``tell``: where systemd's messages go while it starts.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        directory: bool = False,
        on_end: TaskEnded | None = None,
        tell: Callable[[str], object] = notify,
    ):
        self.config = config
        self.store = store
        self.tell = tell  # systemd's notify, or a worker's report to its supervisor
        self.directory = directory
        self.on_end = on_end
        self.tracker: Tracker | None = None
        self.publisher: StorePublisher | None = None  # where changed readings go: hook in after start
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Tracker:
        """Prime the tracker with an incremental scan, then start its tasks; they first run at the
        caller's next ``await``, so it can hook into the tracker before any event reaches it."""
        async with asking_more_time(self.tell):  # the first scan may outlast TimeoutStartSec
            tracker, publisher = await start_tracker(self.config, self.store)
        self.tracker, self.publisher = tracker, publisher
        work = [tracker.run(), rescan_forever(self.config, self.store, tracker, publisher)]
        if self.directory:
            work.append(follow_directory(self.config, self.store, tracker))
        self._tasks = [asyncio.create_task(w) for w in work]
        if self.on_end is not None:
            for task in self._tasks:
                task.add_done_callback(self.on_end)
        return tracker

    async def stop(self) -> None:
        """Cancel the tasks, wait for them to end, close the tracker's watches (a task cancelled
        before it ran never did) and the store (off the loop: a rescan's thread may still use it).
        Safe after a :meth:`start` that failed."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.tracker is not None:
            self.tracker.close()
        await asyncio.to_thread(self.store.close)

    async def until_signalled(self) -> None:
        """``quotagate watch``'s life: ready until SIGTERM or SIGINT (telling systemd both), or until
        a task fails, whose error is raised."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        notify("READY=1")
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        notify("STOPPING=1")
        for task in done:
            if task is not waiter and not task.cancelled() and (error := task.exception()) is not None:
                raise error
