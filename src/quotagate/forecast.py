"""When a mailbox will be full, from its usage history: a robust trend, in pure functions.

Theil-Sen: the median of the slopes between every pair of samples. One big delivery, a purge or
a restored folder moves a least-squares line a lot and this one little; it needs no tuning and
stays right with up to ~29% of the samples out of line. The line is anchored at the current
usage (not at its own intercept): "full in about N days" counts from what the mailbox holds now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from quotagate.history import DAY, HOUR, Sample
from quotagate.model import Limits

# At most this many samples enter the pairs (evenly spread): 48 give 1,128 pairs per mailbox.
MAX_POINTS = 48
# Samples spanning less than this say nothing about a trend.
MIN_SPAN = HOUR
# A mailbox that would take longer than this to fill is "not filling".
HORIZON = 10 * 365 * DAY


@dataclass(frozen=True)
class Forecast:
    """Growth per day (bytes, messages) and when the first limit is reached (None: not filling)."""

    bytes_per_day: float
    messages_per_day: float
    full_at: float | None


def theil_sen(points: Sequence[tuple[float, float]]) -> float | None:
    """The median slope over all pairs of points with different x; None without such a pair."""
    points = sorted(points)
    if len(points) > MAX_POINTS:
        step = (len(points) - 1) / (MAX_POINTS - 1)
        points = [points[round(i * step)] for i in range(MAX_POINTS)]
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 > x1]
    return median(slopes) if slopes else None


def _full_at(used: int, limit: int, per_second: float, at: float) -> float | None:
    if not limit:
        return None
    if used >= limit:
        return at
    if per_second <= 0:
        return None
    seconds = (limit - used) / per_second
    return at + seconds if seconds <= HORIZON else None


def forecast(samples: Sequence[Sample], limits: Limits, used: tuple[int, int], at: float) -> Forecast | None:
    """The trend of ``samples`` (one mailbox's, within the window wanted) from ``used`` (bytes,
    messages) measured at ``at``; None when the samples span too little time to tell."""
    if any(limit and value >= limit for value, limit in zip(used, (limits.bytes, limits.messages), strict=True)):
        return Forecast(0.0, 0.0, at)  # full already, whatever the history says
    points = [s for s in samples if s.at <= at]
    if not points or at - min(s.at for s in points) < MIN_SPAN:
        return None
    with_now = [*points, Sample("", at, *used)]
    per_byte = theil_sen([(s.at, s.bytes) for s in with_now]) or 0.0
    per_message = theil_sen([(s.at, s.messages) for s in with_now]) or 0.0
    ends = [
        t
        for t in (_full_at(used[0], limits.bytes, per_byte, at), _full_at(used[1], limits.messages, per_message, at))
        if t is not None
    ]
    return Forecast(per_byte * DAY, per_message * DAY, min(ends) if ends else None)


def days_left(f: Forecast | None, now: float) -> float | None:
    """Days until full (0 when full already), or None when not filling."""
    if f is None or f.full_at is None:
        return None
    return max(0.0, (f.full_at - now) / DAY)


def describe(f: Forecast | None, now: float) -> str:
    """What people read: "full now", "full within a day", "full in about N days", "not filling"."""
    days = days_left(f, now)
    if days is None:
        return "not filling"
    if days == 0:
        return "full now"
    if days < 1:
        return "full within a day"
    n = round(days)
    return f"full in about {n} day{'s' if n != 1 else ''}"
