"""Measurements in lanes: a slow one holds up neither the others nor the flush, and is never run
twice at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from quotagate.watch.lanes import Lanes


def test_a_stuck_job_holds_up_neither_the_jobs_behind_it_nor_the_caller() -> None:
    """``slow`` runs first in its lane and blocks: once it has been stuck for ``patience`` the
    caller returns (no flush waits longer), the others move to a lane of their own and their
    results come in at the next call, and ``slow``'s at a later one, once it is done."""
    release = threading.Event()
    started: list[str] = []

    def measure(job: str) -> str:
        started.append(job)
        if job == "slow":
            release.wait(5)
        return job.upper()

    async def run() -> None:
        lanes: Lanes[str] = Lanes(patience=0.1)
        begun = time.monotonic()
        first = await lanes.run(["slow", "a", "b"], measure, str, timeout=10)
        assert time.monotonic() - begun < 1
        for _ in range(100):
            if lanes.in_flight() == {"slow"}:
                break
            await asyncio.sleep(0.01)
        assert first | await lanes.run([], measure, str, timeout=10) == {"a": "A", "b": "B"}
        assert lanes.in_flight() == {"slow"}
        assert await lanes.run(["slow"], measure, str, timeout=10) == {}  # in flight: not started again
        release.set()
        for _ in range(100):
            if lanes.has_ready():
                break
            await asyncio.sleep(0.01)
        assert await lanes.run([], measure, str, timeout=10) == {"slow": "SLOW"}
        assert lanes.in_flight() == set()

    asyncio.run(run())
    assert sorted(started) == ["a", "b", "slow"]


def test_the_results_of_a_quick_batch_come_in_one_call() -> None:
    async def run() -> dict[str, int]:
        lanes: Lanes[int] = Lanes(patience=5)
        return await lanes.run(["a", "bb", "ccc"], len, lambda _: -1, timeout=10)

    assert asyncio.run(run()) == {"a": 1, "bb": 2, "ccc": 3}


def test_a_job_past_its_timeout_is_late() -> None:
    def measure(job: str) -> str:
        time.sleep(1)
        return "done"

    async def run() -> dict[str, str]:
        lanes: Lanes[str] = Lanes(patience=5)
        return await lanes.run(["x"], measure, lambda job: f"late {job}", timeout=0.1)

    assert asyncio.run(run()) == {"x": "late x"}


def test_what_a_job_raises_is_raised_by_the_call_that_takes_it() -> None:
    def measure(job: str) -> str:
        raise ValueError(job)

    async def run() -> None:
        lanes: Lanes[str] = Lanes(patience=5)
        with pytest.raises(ValueError, match="x"):
            await lanes.run(["x"], measure, str, timeout=1)
        assert lanes.in_flight() == set()

    asyncio.run(run())
