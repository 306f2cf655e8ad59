"""``quotagate watch``: keep usage and the published set fresh from file-system events."""

from __future__ import annotations

import asyncio

import click

from quotagate.cli.app import App, pass_app
from quotagate.watch.watcher import Watcher


async def _watch(app: App) -> None:
    config = app.config
    watcher = Watcher(config, app.store(), directory=True)
    ledger = None
    try:
        tracker = await watcher.start()
        if config.shared.url is not None and watcher.publisher is not None:
            # A storage host: deliveries and readings go to every MX.
            from quotagate.policy.reservations import Reservations  # the Redis client: only here
            from quotagate.policy.shared import RedisLedger

            ledger = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            ledger.current = tracker.readings.values
            await ledger.start()
            tracker.on_delivery = ledger.delivered
            watcher.publisher.on_change.append(ledger.readings)
        await watcher.until_signalled()
    finally:
        await watcher.stop()
        if ledger is not None:
            await ledger.close()


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
