"""Mailbox measurements run in threads of their own, so that one slow mailbox holds up no other.

A flush hands its dirty mailboxes to a lane (a thread measuring them one after another, each
within its timeout, as :func:`quotagate.bounded.in_thread` does) and waits only while the lane
makes progress: a mailbox still measured after ``patience`` seconds (an 8 TiB sparse mbox, a
hung mount) keeps its lane, and the mailboxes queued behind it move to a new one. Once every lane
of the flush is done or stuck, the flush takes the results that are in; a stuck mailbox's comes in
at a later flush (then, or after its timeout, unknown). A mailbox is in one lane at a time: never
measured twice at once, however often its sender makes it dirty meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from quotagate import bounded

R = TypeVar("R")

# Lanes one flush may open for the mailboxes queued behind stuck ones (its own lanes' or an
# earlier flush's): past that, they wait for the next flush, which moves them on again (a hung
# mount costs a thread per mailbox on it that is being measured, as any measurement does).
MOST_LANES = 4


@dataclass(eq=False)
class _Lane(Generic[R]):
    """One thread's jobs: what it measures with, and how far it got (under :class:`Lanes`' lock)."""

    measure: Callable[[str], R]
    late: Callable[[str], R]
    timeout: float
    queued: deque[str]  # not started yet: moved to a new lane when this one is stuck
    running: str | None = None
    since: float = 0.0  # when ``running`` started (time.monotonic)
    ended: bool = False
    jobs: list[str] = field(default_factory=list)  # every job given to the lane, in order


class Lanes(Generic[R]):
    """Measurements in flight and their results, shared by the event loop and the lanes' threads."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self._lock = threading.Lock()
        self._ready: dict[str, R] = {}
        self._in_flight: set[str] = set()
        self._live: list[_Lane[R]] = []  # every lane not ended, of this flush or an earlier one
        # Mailboxes whose measurement runs in some thread: one given up on after its timeout runs
        # on (a hung mount); started again meanwhile, it would cost a thread more each time.
        self._running: dict[str, int] = {}
        self._error: BaseException | None = None
        self._wake: asyncio.Event | None = None  # set (on the loop) when a lane hands on a result
        self._loop: asyncio.AbstractEventLoop | None = None

    def in_flight(self) -> set[str]:
        """The mailboxes queued or being measured (a measurement given up on included, while
        its thread still runs)."""
        with self._lock:
            return self._in_flight | self._running.keys()

    def has_ready(self) -> bool:
        """Whether results (or a measurement's error) wait to be taken: a flush is due."""
        with self._lock:
            return bool(self._ready) or self._error is not None

    def stalled(self) -> bool:
        """Whether mailboxes queue behind a stuck lane: a flush is due, to move them on."""
        with self._lock:
            lanes = [lane for lane in self._live if lane.queued]
        return any(self._stuck(lane) for lane in lanes)

    def ready(self) -> set[str]:
        """The mailboxes whose measurement is in, not taken yet (taken as it was: an event for
        one of them since must not be applied to the reading it replaces)."""
        with self._lock:
            return set(self._ready)

    async def run(
        self, addresses: Iterable[str], measure: Callable[[str], R], late: Callable[[str], R], timeout: float
    ) -> dict[str, R]:
        """Measure ``addresses`` (those not in flight already), wait while their lanes progress,
        and take every result that is in (of earlier flushes' lanes too). Raises what a
        measurement raised."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._wake is None:  # an Event belongs to one loop
            self._loop, self._wake = loop, asyncio.Event()
        with self._lock:
            start = [a for a in addresses if a not in self._in_flight and a not in self._running]
            self._in_flight.update(start)
            self._live = [lane for lane in self._live if not lane.ended]
        own = [self._open(_Lane(measure, late, timeout, deque(start)))] if start else []
        opened = 0
        while True:
            self._wake.clear()  # before looking: a result handed on from now on wakes the wait
            # What queues behind a stuck lane (this flush's, or an earlier one's) moves to a new
            # lane, which this flush does not wait for: a flush lasts one patience at most, and
            # hands on what is ready; a later one takes the rest.
            with self._lock:
                live = list(self._live)
            for lane in live:
                if opened < MOST_LANES and self._stuck(lane) and (moved := self._move_queued(lane)) is not None:
                    self._open(moved)
                    opened += 1
            if all(lane.ended or self._stuck(lane) for lane in own):
                return self._take()
            with contextlib.suppress(TimeoutError):  # a job started meanwhile may be stuck by then
                await asyncio.wait_for(self._wake.wait(), self._until_stuck(own))

    def _until_stuck(self, lanes: list[_Lane[R]]) -> float:
        """How long until the first running job of ``lanes`` may be stuck (a job starting now:
        ``patience``); a job starts without a word to the loop."""
        now = time.monotonic()
        with self._lock:
            running = [lane.since for lane in lanes if lane.running is not None and not lane.ended]
        first = min((since for since in running if now - since <= self.patience), default=now)
        return max(0.0, first + self.patience - now) + 0.01

    def _stuck(self, lane: _Lane[R]) -> bool:
        with self._lock:
            return not lane.ended and lane.running is not None and time.monotonic() - lane.since > self.patience

    def _move_queued(self, lane: _Lane[R]) -> _Lane[R] | None:
        """A new lane for what queues behind a stuck one's running job, or None when nothing does."""
        with self._lock:
            if not lane.queued:
                return None
            queued, lane.queued = lane.queued, deque()
        return _Lane(lane.measure, lane.late, lane.timeout, queued)

    def _open(self, lane: _Lane[R]) -> _Lane[R]:
        lane.jobs = list(lane.queued)
        with self._lock:
            self._live.append(lane)
        threading.Thread(target=self._drive, args=(lane,), name="quotagate-lane", daemon=True).start()
        return lane

    def _drive(self, lane: _Lane[R]) -> None:
        """The lane's thread: each job in a bounded thread (given up on after its timeout); results
        handed on as they come. A job moved to another lane meanwhile is skipped."""
        try:
            results = bounded.in_thread(lambda a: self._one(lane, a), lane.jobs, lane.timeout, lane.late)
            for address, result in zip(lane.jobs, results, strict=True):
                if result is not None:
                    self._hand_on(lane, address, result)
        except BaseException as exc:  # noqa: BLE001 - raised on the loop, by the flush that takes it
            with self._lock:
                self._error = exc
                self._in_flight.difference_update([*lane.queued, *filter(None, [lane.running])])
        finally:
            with self._lock:
                lane.ended = True
            self._signal()

    def _one(self, lane: _Lane[R], address: str) -> R | None:
        with self._lock:
            if not lane.queued or lane.queued[0] != address:
                return None  # moved to another lane
            lane.queued.popleft()
            lane.running, lane.since = address, time.monotonic()
            self._running[address] = self._running.get(address, 0) + 1
        try:
            return lane.measure(address)
        finally:
            with self._lock:
                if self._running[address] == 1:
                    del self._running[address]
                else:
                    self._running[address] -= 1

    def _hand_on(self, lane: _Lane[R], address: str, result: R) -> None:
        with self._lock:
            self._ready[address] = result
            self._in_flight.discard(address)
            if lane.running == address:
                lane.running = None
        self._signal()

    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the tracker is gone
                loop.call_soon_threadsafe(wake.set)

    def _take(self) -> dict[str, R]:
        with self._lock:
            ready, self._ready = self._ready, {}
            error, self._error = self._error, None
        if error is not None:
            raise error
        return ready
