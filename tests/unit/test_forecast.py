"""The fill forecast on synthetic histories (pure)."""

from __future__ import annotations

import random

from quotagate.forecast import Forecast, describe, forecast, theil_sen
from quotagate.history import DAY, HOUR, Sample
from quotagate.model import Limits

NOW = 1_800_000_000.0
MB = 1_000_000


def history(per_day: float, days: int = 14, start: int = 100 * MB, every: float = HOUR) -> list[Sample]:
    n = int(days * DAY / every)
    return [Sample("a@x", NOW - (n - i) * every, int(start + per_day * (i * every / DAY)), 10 + i) for i in range(n)]


def current(samples: list[Sample]) -> tuple[int, int]:
    return samples[-1].bytes, samples[-1].messages


def test_theil_sen_ignores_outliers() -> None:
    points = [(float(x), 2.0 * x) for x in range(20)]
    points[3] = (3.0, 10_000.0)  # a restored folder
    points[15] = (15.0, -500.0)  # a purge
    assert theil_sen(points) == 2.0
    assert theil_sen([(1.0, 5.0)]) is None
    assert theil_sen([(1.0, 5.0), (1.0, 6.0)]) is None


def test_a_steady_fill_gives_the_day_it_will_be_full() -> None:
    samples = history(10 * MB)  # 10 MB a day, at 240 MB after 14 days
    f = forecast(samples, Limits(500 * MB), current(samples), NOW)
    assert f is not None and f.full_at is not None
    assert round(f.bytes_per_day / MB) == 10
    assert round((f.full_at - NOW) / DAY) == 26
    assert describe(f, NOW) == "full in about 26 days"


def test_noise_and_a_one_off_purge_do_not_move_it_much() -> None:
    rng = random.Random(17)
    samples = [s._replace(bytes=s.bytes + rng.randint(-2 * MB, 2 * MB)) for s in history(10 * MB)]
    samples[200] = samples[200]._replace(bytes=5 * MB)
    f = forecast(samples, Limits(500 * MB), current(samples), NOW)
    assert f is not None and 9 * MB < f.bytes_per_day < 11 * MB


def test_a_flat_or_shrinking_mailbox_is_not_filling() -> None:
    for rate in (0, -5 * MB):
        samples = history(rate)
        f = forecast(samples, Limits(500 * MB), current(samples), NOW)
        assert f is not None and f.full_at is None
        assert describe(f, NOW) == "not filling"


def test_the_message_limit_counts_too() -> None:
    samples = history(1)  # bytes barely move; one message an hour
    f = forecast(samples, Limits(500 * MB, 10 + 336 + 48), current(samples), NOW)
    assert f is not None and describe(f, NOW) == "full in about 2 days"


def test_full_already_and_soon() -> None:
    samples = history(10 * MB)
    assert describe(forecast(samples, Limits(200 * MB), current(samples), NOW), NOW) == "full now"
    f = forecast(samples, Limits(245 * MB), current(samples), NOW)
    assert describe(f, NOW) == "full within a day"
    assert describe(Forecast(0, 0, NOW + 1.4 * DAY), NOW) == "full in about 1 day"


def test_too_little_history_says_nothing() -> None:
    assert forecast([], Limits(10), (1, 1), NOW) is None
    assert forecast([Sample("a@x", NOW - 60, 1, 1)], Limits(10), (5, 1), NOW) is None
    assert describe(None, NOW) == "not filling"
    assert describe(forecast([], Limits(10), (10, 1), NOW), NOW) == "full now"  # full needs no history


def test_unlimited_never_fills() -> None:
    samples = history(10 * MB)
    f = forecast(samples, Limits(), current(samples), NOW)
    assert f is not None and f.full_at is None
