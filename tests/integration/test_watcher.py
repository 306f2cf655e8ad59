"""The one watch assembly ``quotagate watch`` and ``quotagate serve`` share: what stop lets go of."""

from __future__ import annotations

import asyncio

from quotagate.store import open_store
from quotagate.watch.watcher import Watcher
from tests.descriptors import INOTIFY, held
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder


def test_stop_ends_the_tasks_and_closes_the_watches_and_the_store(env: Env) -> None:
    add_message(maildir_folder(env.maildir("alice")), 10)
    env.add("alice")
    db = env.base / "db" / "q.db"
    before = held(db), held(INOTIFY)

    async def run() -> None:
        watcher = Watcher(env.config, open_store(env.config.store.url), directory=True)
        tracker = await watcher.start()
        await asyncio.sleep(0.1)  # its tasks run
        assert tracker.mode == "inotify" and held(INOTIFY) == before[1] + 1
        assert held(db) == before[0] + 1
        await watcher.stop()
        assert (held(db), held(INOTIFY)) == before
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(run())
