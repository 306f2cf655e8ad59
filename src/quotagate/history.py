"""Usage history: samples per mailbox, which to record, and how they thin out with age.

Pure logic, no I/O: the store keeps the samples (``quotagate_history``), scans and the watch
hand them in, and pruning asks :func:`thin` which rows to keep.

Samples thin out with age so that a year of history costs about as much as two days of it:
every sample for ``raw_days``, the last one of each hour up to ``hourly_days``, the last one of
each day up to ``daily_days``, nothing after. Each stored sample carries its resolution (0 raw,
1 hourly, 2 daily), so a prune only reads the samples that crossed an age boundary since the
last one, never the whole history.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from msgspec import Struct

HOUR = 3600.0
DAY = 86400.0
RAW, HOURLY, DAILY = 0, 1, 2


class Sample(NamedTuple):
    """What a mailbox held at one time (counted bytes and messages, after folder rules)."""

    address: str
    at: float
    bytes: int
    messages: int


class Stored(NamedTuple):
    """A stored sample's key and age, as a prune reads it: no sizes needed to thin."""

    id: int
    address: str
    at: float


class Retention(Struct, frozen=True):
    """How long samples are kept at each resolution, in days (see the module's docstring)."""

    raw_days: float = 2
    hourly_days: float = 30
    daily_days: float = 730


class Tier(Struct, frozen=True):
    """One step of a prune: samples below ``resolution`` older than ``before`` become one per
    ``bucket`` seconds, marked ``resolution``. ``before`` is aligned to a bucket boundary, so a
    bucket is thinned once, whole, and never ends up with two survivors."""

    resolution: int
    bucket: float
    before: float


def tiers(now: float, retention: Retention) -> tuple[Tier, Tier]:
    hourly = (now - retention.raw_days * DAY) // HOUR * HOUR
    daily = (now - retention.hourly_days * DAY) // DAY * DAY
    return Tier(HOURLY, HOUR, hourly), Tier(DAILY, DAY, daily)


def expiry(now: float, retention: Retention) -> float:
    """Samples older than this are deleted."""
    return now - retention.daily_days * DAY


def thin(rows: Iterable[Stored], bucket: float) -> tuple[list[int], list[int]]:
    """(ids to keep, ids to drop): the last sample of each mailbox in each bucket survives."""
    last: dict[tuple[str, float], Stored] = {}
    drop = []
    for row in rows:
        key = (row.address, row.at // bucket)
        held = last.get(key)
        if held is None:
            last[key] = row
        elif (row.at, row.id) > (held.at, held.id):
            drop.append(held.id)
            last[key] = row
        else:
            drop.append(row.id)
    return sorted(r.id for r in last.values()), sorted(drop)


class Recorder:
    """Which samples a watch writes: a mailbox's usage when it changed, at most one per
    ``interval`` seconds. A change inside the interval waits (the newest one only) and goes out
    with the first batch after the interval: a 1,000-deliveries/s watch writes at most one sample
    per busy mailbox per interval, and an idle mailbox none."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, Sample] = {}
        self._waiting: dict[str, Sample] = {}
        self._due: list[tuple[float, str]] = []  # (when it may be written, address), a heap

    def offer(self, samples: Iterable[Sample]) -> list[Sample]:
        """Samples to write now, from these and those whose interval has passed by the newest."""
        out = []
        now = 0.0
        for s in samples:
            now = max(now, s.at)
            last = self._last.get(s.address)
            if last is not None and (last.bytes, last.messages) == (s.bytes, s.messages):
                self._waiting.pop(s.address, None)  # back to what was written: nothing new to say
                continue
            if last is None or s.at - last.at >= self.interval:
                self._waiting.pop(s.address, None)
                self._last[s.address] = s
                out.append(s)
            else:
                if s.address not in self._waiting:
                    heapq.heappush(self._due, (last.at + self.interval, s.address))
                self._waiting[s.address] = s
        return out + self.due(now)

    def due(self, now: float) -> list[Sample]:
        """The waiting samples whose interval has passed by ``now``."""
        out = []
        while self._due and self._due[0][0] <= now:
            _, address = heapq.heappop(self._due)
            s = self._waiting.pop(address, None)
            if s is not None:
                self._last[address] = s
                out.append(s)
        return out

    def forget(self, addresses: Sequence[str]) -> None:
        for address in addresses:
            self._last.pop(address, None)
            self._waiting.pop(address, None)
