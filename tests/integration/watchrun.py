"""Running ``quotagate watch``'s tracker over a test spool, and delivering into it as an MDA does."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from quotagate.usage.mailbox import Found
from quotagate.watch.runner import StorePublisher, start_tracker
from quotagate.watch.tracker import Tracker
from tests.integration.scanenv import Env
from tests.spoolgen import add_message


def deliver(folder: bytes | Path, size: int, **name: Any) -> bytes:
    """How an MDA delivers: written in tmp/, then renamed into new/ (one MOVED_TO, no write
    event in new/). ``name``: :func:`add_message`'s naming arguments."""
    written = add_message(folder, size, where="tmp", **name)
    delivered = os.path.join(os.fsencode(folder), b"new", os.path.basename(written))
    os.rename(written, delivered)
    return delivered


async def until(check: Callable[[], bool], seconds: float = 3.0) -> bool:
    """Whether ``check()`` holds within ``seconds``, looked at every 20 ms."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


@asynccontextmanager
async def watching(env: Env, **sections: Any) -> AsyncIterator[tuple[Tracker, StorePublisher]]:
    """``quotagate watch``'s tracker over ``env`` (primed by its scan, writing to its store through
    its publisher), running until the block ends; ``sections`` go into the config."""
    watch = {"flush_seconds": 0.05, "poll_seconds": 0.1, **sections.pop("watch", {})}
    scan = {"workers": 1, "racy_seconds": 0, **sections.pop("scan", {})}
    env.configure(watch=watch, scan=scan, **sections)
    tracker, publisher = await start_tracker(env.config, env.store)
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.sleep(0.3)  # the first flushes done, every watch in place
        yield tracker, publisher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def hang(tracker: Tracker, addresses: Collection[str], seconds: float) -> threading.Event:
    """Measurements of ``addresses`` block, as on a hung mount, until the gate returned is set
    (or ``seconds`` pass): set it once done, or the threads outlive the test."""
    gate = threading.Event()
    real = tracker._measure_one

    def hangs(address: str) -> Found:
        if address in addresses:
            gate.wait(seconds)
        return real(address)

    tracker._measure_one = hangs  # type: ignore[method-assign]
    return gate
