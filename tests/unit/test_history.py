"""Which samples are written and which survive a prune (pure)."""

from __future__ import annotations

from quotagate.history import DAY, HOUR, Recorder, Retention, Sample, Stored, expiry, thin, tiers


def test_thin_keeps_the_last_sample_of_each_mailbox_in_each_bucket() -> None:
    rows = [
        Stored(1, "a@x", 10 * HOUR + 5),
        Stored(2, "a@x", 10 * HOUR + 50),
        Stored(3, "b@x", 10 * HOUR + 1),
        Stored(4, "a@x", 11 * HOUR),
        Stored(5, "a@x", 10 * HOUR + 20),
    ]
    keep, drop = thin(rows, HOUR)
    assert keep == [2, 3, 4]
    assert drop == [1, 5]


def test_thin_breaks_ties_on_the_newest_row() -> None:
    keep, drop = thin([Stored(7, "a@x", 100.0), Stored(3, "a@x", 100.0)], HOUR)
    assert (keep, drop) == ([7], [3])


def test_tiers_are_aligned_to_whole_buckets() -> None:
    now = 1000 * DAY + 5 * HOUR + 123
    hourly, daily = tiers(now, Retention(2, 30, 730))
    assert hourly.before == 998 * DAY + 5 * HOUR
    assert daily.before == 970 * DAY
    assert expiry(now, Retention(2, 30, 730)) == now - 730 * DAY


def test_recorder_writes_changes_at_most_once_per_interval() -> None:
    r = Recorder(300)
    assert r.offer([Sample("a@x", 0, 10, 1)]) == [Sample("a@x", 0, 10, 1)]
    assert r.offer([Sample("a@x", 1, 10, 1)]) == []  # unchanged
    assert r.offer([Sample("a@x", 2, 20, 2)]) == []  # changed, inside the interval: waits
    assert r.offer([Sample("a@x", 3, 30, 3)]) == []  # only the newest waits
    assert r.offer([Sample("b@x", 299, 1, 1)]) == [Sample("b@x", 299, 1, 1)]
    assert r.offer([Sample("b@x", 300, 1, 1)]) == [Sample("a@x", 3, 30, 3)]  # a's interval passed
    assert r.offer([Sample("a@x", 700, 40, 4)]) == [Sample("a@x", 700, 40, 4)]


def test_recorder_drops_a_change_that_went_back() -> None:
    r = Recorder(300)
    r.offer([Sample("a@x", 0, 10, 1)])
    r.offer([Sample("a@x", 1, 20, 2)])
    r.offer([Sample("a@x", 2, 10, 1)])
    assert r.due(1000) == []


def test_a_burst_costs_one_sample_per_mailbox_per_interval() -> None:
    r = Recorder(300)
    written = []
    for i in range(100_000):  # 1,000 deliveries/s for 100 s into 50 mailboxes
        written += r.offer([Sample(f"m{i % 50}@x", i / 1000, i, i)])
    assert len(written) == 50
    written += r.due(10_000)
    assert len(written) == 100
