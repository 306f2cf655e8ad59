"""``quotagate watch``: keep usage and the published set fresh from file-system events."""

from __future__ import annotations

import asyncio

import click

from quotagate.cli.app import App, pass_app
from quotagate.watch.watcher import Watcher


async def _watch(app: App) -> None:
    watcher = Watcher(app.config, app.store(), directory=True)
    try:
        await watcher.start()
        await watcher.until_signalled()
    finally:
        await watcher.stop()


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
