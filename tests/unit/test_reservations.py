from hypothesis import given
from hypothesis import strategies as st

from quotagate.decide import Reserved
from quotagate.policy.reservations import Reservations


def test_held_sums_live_reservations() -> None:
    r = Reservations(seconds=60)
    r.hold("a@x", 100, now=10)
    r.hold("a@x", 50, now=20)
    r.hold("b@x", 7, now=20)
    assert r.held("a@x", now=30, measured_at=0) == Reserved(150, 2)
    assert r.held("c@x", now=30, measured_at=0) == Reserved()
    assert r.total() == (2, 157)


def test_expired_reservations_are_dropped() -> None:
    r = Reservations(seconds=60)
    r.hold("a@x", 100, now=10)
    r.hold("a@x", 50, now=40)
    assert r.held("a@x", now=70, measured_at=0) == Reserved(50, 1)
    assert r.held("a@x", now=100, measured_at=0) == Reserved()
    assert r.total() == (0, 0)


def test_fresher_usage_releases_reservations_made_before_it() -> None:
    r = Reservations(seconds=600)
    r.hold("a@x", 100, now=10)
    r.hold("a@x", 50, now=20)
    assert r.held("a@x", now=25, measured_at=15) == Reserved(50, 1)


def test_prune_forgets_expired_mailboxes() -> None:
    r = Reservations(seconds=5)
    r.hold("a@x", 1, now=0)
    r.hold("b@x", 1, now=10)
    r.prune(now=8)
    assert r.total() == (1, 1)


@given(st.lists(st.tuples(st.integers(1, 10**6), st.floats(0, 100)), max_size=30), st.floats(0, 200), st.floats(0, 200))
def test_held_matches_a_direct_count(holds: list[tuple[int, float]], now: float, measured_at: float) -> None:
    r = Reservations(seconds=30)
    for size, made in sorted(holds, key=lambda h: h[1]):
        r.hold("a@x", size, now=made)
    live = [size for size, made in holds if made + 30 > now and made >= measured_at]
    assert r.held("a@x", now, measured_at) == Reserved(sum(live), len(live))
