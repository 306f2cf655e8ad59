"""A periodic rescan that ends while the watcher's batch is being committed: the rescan's
over-quota flags and the batch's must both be in the published file afterwards."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from quotagate.model import Limits, State
from quotagate.watch.runner import start_tracker
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder


def test_a_rescan_ending_during_a_commit_keeps_its_over_quota_flags(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """bob goes over quota behind the watcher's back (drift: events it did not read); the
    periodic rescan finds it and publishes bob as full, while a batch of alice's is being
    committed (a slow store). The batch was computed against the set before the rescan: once it is
    committed, the published file and the store still hold bob, right away and after the next
    batch that moves a flag (alice going over quota)."""
    alice, bob = env.maildir("alice"), env.maildir("bob")
    add_message(maildir_folder(alice), 100)
    add_message(maildir_folder(bob), 100)
    a = env.add("alice", Limits(1000))
    b = env.add("bob", Limits(1000))
    published = env.base / "over"
    env.configure(publish={"file": str(published)}, scan={"workers": 1, "racy_seconds": 0})

    async def run() -> None:
        tracker, publisher = await start_tracker(env.config, env.store)
        try:
            while tracker._dirty:  # the first measurements (every mailbox), watches in place
                await tracker.flush()
            # Drift the rescan is there to correct: 5,000 bytes in bob's cur/ the tracker did not
            # see (its events not read: the tracker's run loop is not running here).
            add_message(bob, 5000)
            add_message(alice, 10)  # a change of alice's: the next flush has a batch to commit
            tracker.mark_dirty(a)
            commit = publisher._commit
            entered, go_on = threading.Event(), threading.Event()

            def slow_commit(*args: Any) -> Any:  # a store that takes a moment to write, once
                if not entered.is_set():
                    entered.set()
                    go_on.wait(5)
                return commit(*args)

            monkeypatch.setattr(publisher, "_commit", slow_commit)
            flushing = asyncio.create_task(tracker.flush())
            assert await asyncio.to_thread(entered.wait, 5)
            # rescan_forever's step, ending meanwhile: bob is over quota, and published so.
            touched = tracker.begin_rescan()
            result = env.scan()
            tracker.adopt(result.readings, touched)
            publisher.reset(result.stored)
            assert result.readings[b].state is State.OVER and b in published.read_text()
            go_on.set()
            await flushing
            assert b in published.read_text()
            assert env.store.readings()[b].state is State.OVER
            # alice goes over quota: a flag moves, the file is written again.
            add_message(alice, 5000)
            tracker.mark_dirty(a)
            await tracker.flush()
            assert a in published.read_text()
            assert tracker.readings[b].state is State.OVER
            assert b in published.read_text(), published.read_text()
        finally:
            tracker.close()

    asyncio.run(run())
