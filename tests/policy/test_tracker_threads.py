"""The tracker inside serve looks at users' folders from worker threads, never from the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

import pytest
from asyncinotify import Inotify, Mask, Watch
from msgspec.structs import replace

from quotagate.accounting import Profile
from quotagate.model import MailboxUsage, Reading
from quotagate.store import open_store
from quotagate.usage import maildir
from quotagate.usage.mailbox import unchanged_each as usage_unchanged_each
from quotagate.usage.safefs import Roots
from quotagate.watch import tracker as tracker_module
from quotagate.watch.tracker import Tracker
from tests.policy.conftest import DOMAIN, Site, run, wait_until
from tests.spoolgen import add_message, maildir_folder


@pytest.mark.parametrize("mode", ["poll", "inotify"])
def test_folder_stats_and_new_watches_happen_off_the_event_loop(
    site: Site, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []  # (what, on the loop's thread)
    loop_thread: list[int] = []
    unchanged_each = usage_unchanged_each
    add_watch = Inotify.add_watch

    def spy_unchanged_each(
        looks: Iterable[tuple[str, MailboxUsage]], roots: Roots, profile: Profile, layout: maildir.Layout
    ) -> list[bool]:
        calls.append(("stat", threading.get_ident() in loop_thread))
        return unchanged_each(looks, roots, profile, layout)

    def spy_add_watch(self: Inotify, path: str, mask: Mask) -> Watch:
        calls.append(("add_watch", threading.get_ident() in loop_thread))
        return add_watch(self, path, mask)

    monkeypatch.setattr(tracker_module, "unchanged_each", spy_unchanged_each)
    monkeypatch.setattr(Inotify, "add_watch", spy_add_watch)
    config = site.config()
    config = replace(config, watch=replace(config.watch, flush_seconds=0.02, poll_seconds=0.02))
    published: list[Reading] = []

    async def publish(changed: list[Reading], removed: list[str]) -> None:
        published.extend(changed)

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        store = open_store(site.db_url)
        try:
            tracker = Tracker(config, publish, mode=mode)
            tracker.load(store.mailboxes(), store.readings())
        finally:
            store.close()
        if mode == "inotify":
            tracker.start_watching()  # at start, before serving: the runner calls it
            calls.clear()
        task = asyncio.create_task(tracker.run())
        try:
            assert await wait_until(lambda: tracker.confirmed_at > 0)
            # A new folder: measured, then watched.
            add_message(maildir_folder(site.spool / DOMAIN / "roomy" / "Maildir", "Sent"), 100)
            if mode == "inotify":
                assert await wait_until(lambda: any(what == "add_watch" for what, _ in calls))
            else:
                assert await wait_until(lambda: any(r.bytes > 1000 for r in published if "roomy" in r.address))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(main())
    assert calls, "nothing looked at the folders"
    assert [c for c in calls if c[1]] == [], calls
