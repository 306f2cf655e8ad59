"""``quotagate watch``: keep usage and the published set fresh from file-system events."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from quotagate.cli.app import App, pass_app
from quotagate.policy.reservations import Reservations
from quotagate.policy.shared import RedisLedger
from quotagate.sdnotify import notify
from quotagate.watch.runner import follow_directory, rescan_forever, start_tracker

log = logging.getLogger(__name__)


async def _watch(app: App) -> None:
    config = app.config
    store = app.store()
    ledger = None
    try:
        tracker, publisher = await start_tracker(config, store)
        if config.shared.url is not None:  # a storage host: deliveries and readings go to every MX
            ledger = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            ledger.current = tracker.readings.values
            await ledger.start()
            tracker.on_delivery = ledger.delivered
            publisher.on_change.append(ledger.readings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(tracker.run()),
            asyncio.create_task(rescan_forever(config, store, tracker, publisher)),
            asyncio.create_task(follow_directory(config, store, tracker)),
        ]
        notify("READY=1")
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        notify("STOPPING=1")
        for task in [waiter, *tasks]:
            task.cancel()
        await asyncio.gather(waiter, *tasks, return_exceptions=True)
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        if ledger is not None:
            await ledger.close()
        store.close()


@click.command("watch")
@pass_app
def watch(app: App) -> None:
    """Keep usage and the published over-quota set fresh from file-system events until SIGTERM.

    Uses inotify when the watches fit under fs.inotify.max_user_watches, else polls folder mtimes
    ([watch] mode). A light incremental scan corrects drift every [watch] rescan_seconds.
    """
    asyncio.run(_watch(app))


def register(cli: click.Group) -> None:
    cli.add_command(watch)
