"""What an expunge costs the watch: a deletion is a measurement (never a subtraction by the
size in a name, which a symlink or FIFO can carry: see test_watch_drift.py), at most two a
second per mailbox."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from quotagate.model import Limits
from quotagate.usage.mailbox import Found
from quotagate.watch import tracker as tracking
from tests.integration.scanenv import Env
from tests.integration.watchrun import until, watching
from tests.spoolgen import maildir_folder

MESSAGES = 50_000
DELETED = 1_000


def test_deleting_messages_one_by_one_from_a_big_mailbox_measures_it_twice_a_second_at_most(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's client expunges 1,000 of the 50,000 messages of her INBOX one by one (a message
    every ~5 ms, one EXPUNGE each). A measurement per flush (0.2 s) would list and size all
    ~50,000 names again each time: several seconds of CPU for one selection deleted, and the
    lanes it takes would delay other mailboxes. Two a second keep her usage fresh within a second."""
    root = env.maildir("big")
    cur = os.path.join(maildir_folder(root), b"cur")
    names = []
    for i in range(MESSAGES):
        name = f"1700000000.M{i}P1.host,S=100,W=102:2,S".encode()
        with open(os.path.join(cur, name), "wb") as f:
            f.write(b"x" * 100)
        names.append(name)
    big = env.add("big", Limits(10**9))
    measured: list[float] = []
    measure_one = tracking.Tracker._measure_one

    def counting(self: tracking.Tracker, address: str) -> Found:
        measured.append(time.monotonic())
        return measure_one(self, address)

    monkeypatch.setattr(tracking.Tracker, "_measure_one", counting)

    async def run() -> tuple[float, int]:
        async with watching(env, watch={"flush_seconds": 0.2}) as (tracker, _):
            assert tracker.readings[big].messages == MESSAGES
            measured.clear()
            started = time.monotonic()
            for name in names[:DELETED]:
                os.unlink(os.path.join(cur, name))
                await asyncio.sleep(0.005)
            assert await until(lambda: tracker.readings[big].messages == MESSAGES - DELETED, seconds=5)
            return time.monotonic() - started, tracker.readings[big].bytes

    seconds, used = asyncio.run(run())
    assert used == (MESSAGES - DELETED) * 100
    # One at the first deletion, then at most one per _SETTLE (a flush late at most).
    assert len(measured) <= 2 + seconds / tracking._SETTLE, (len(measured), seconds)
