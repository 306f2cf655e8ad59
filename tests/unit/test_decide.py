from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotagate.decide import Reserved, ceiling, decide, is_over
from quotagate.model import Action, Boundary, Limits, Mailbox, Usage
from quotagate.sizes import Allowance

MB = 1024**2


def box(bytes_: int = 100 * MB, messages: int = 0, enabled: bool = True) -> Mailbox:
    return Mailbox("user@example.org", Limits(bytes_, messages), enabled)


def used(bytes_: int, messages: int = 0) -> Usage:
    return Usage(bytes_, messages, measured_at=0.0)


def test_no_opinion_without_a_mailbox_a_limit_usage_or_when_disabled() -> None:
    assert decide(None, used(0)).action is Action.DUNNO
    assert decide(box(enabled=False), used(0)).action is Action.DUNNO
    assert decide(box(0, 0), used(10**12)).action is Action.DUNNO
    assert decide(box(), None).action is Action.DUNNO


@pytest.mark.parametrize("size", [None, 0, -1])
def test_unknown_size_is_the_classic_exclusive_check(size: int | None) -> None:
    assert decide(box(), used(100 * MB - 1), size).action is Action.ACCEPT
    assert decide(box(), used(100 * MB), size).action is Action.REJECT
    assert decide(box(), used(100 * MB + 1), size).action is Action.REJECT


def test_known_size_is_inclusive() -> None:
    assert decide(box(), used(90 * MB), 10 * MB).action is Action.ACCEPT
    assert decide(box(), used(90 * MB), 10 * MB + 1).action is Action.REJECT


def test_reservations_count_as_usage() -> None:
    r = Reserved(bytes=5 * MB, messages=1)
    assert decide(box(), used(90 * MB), 5 * MB, r).action is Action.ACCEPT
    assert decide(box(), used(90 * MB), 5 * MB + 1, r).action is Action.REJECT
    assert decide(box(), used(95 * MB), None, r).action is Action.REJECT


def test_grace_lets_one_message_overflow_a_mailbox_under_its_limit() -> None:
    grace = Allowance(fraction=Decimal("0.1"))
    assert decide(box(), used(99 * MB), 10 * MB, grace=grace).action is Action.ACCEPT
    assert decide(box(), used(99 * MB), 12 * MB, grace=grace).action is Action.REJECT
    # At the limit, grace does not help.
    assert decide(box(), used(100 * MB), 1, grace=grace).action is Action.REJECT


def test_message_limit() -> None:
    assert decide(box(0, 10), used(0, 9), 100).action is Action.ACCEPT
    assert decide(box(0, 10), used(0, 10), 100).action is Action.REJECT
    assert decide(box(0, 10), used(0, 10)).action is Action.REJECT
    assert decide(box(0, 10), used(0, 9), None, Reserved(messages=1)).action is Action.REJECT


def test_folder_limits_override_the_mailbox() -> None:
    d = decide(box(), used(20 * MB), 1, limits=Limits(10 * MB))
    assert d.action is Action.REJECT
    assert d.numbers.limit_bytes == 10 * MB


@given(
    limit=st.integers(1, 10**12),
    usage=st.integers(0, 2 * 10**12),
    reserved=st.integers(0, 10**11),
    size=st.integers(1, 10**11),
)
def test_inclusive_without_grace_accepts_exactly_what_fits(limit: int, usage: int, reserved: int, size: int) -> None:
    d = decide(box(limit), used(usage), size, Reserved(bytes=reserved))
    assert (d.action is Action.ACCEPT) == (usage + reserved + size <= limit)


@given(limit=st.integers(1, 10**12), usage=st.integers(0, 2 * 10**12))
def test_exclusive_matches_the_published_over_flag(limit: int, usage: int) -> None:
    rejected = decide(box(limit), used(usage)).action is Action.REJECT
    assert rejected == is_over(Limits(limit), usage, 0)


def test_threshold() -> None:
    assert not is_over(Limits(1000), 989, 0, Decimal("0.99"))
    assert is_over(Limits(1000), 990, 0, Decimal("0.99"))
    assert is_over(Limits(0, 10), 0, 10)
    assert not is_over(Limits(0, 0), 10**15, 10**9)


# -- the boundary of an accounting profile ----------------------------------------------------


@pytest.mark.parametrize("delta", [-2, -1, 0, 1, 2])
def test_exclusive_boundary_is_over_only_past_the_limit(delta: int) -> None:
    # Exim with quota_is_inclusive = false delivers while usage is not past the quota.
    limits = Limits(1000, 10)
    assert is_over(limits, 1000 + delta, 0, boundary=Boundary.EXCLUSIVE) is (delta > 0)
    assert is_over(limits, 0, 10 + delta, boundary=Boundary.EXCLUSIVE) is (delta > 0)
    assert is_over(limits, 1000 + delta, 0) is (delta >= 0)  # today's default: at the limit is over


@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("size", [None, 1, 10**6])
def test_exclusive_boundary_ignores_the_message_size(delta: int, size: int | None) -> None:
    d = decide(box(1000), used(1000 + delta), size, boundary=Boundary.EXCLUSIVE)
    assert d.action is (Action.REJECT if delta > 0 else Action.ACCEPT)


def test_inclusive_boundary_is_the_default() -> None:
    assert decide(box(1000), used(1000)).action is Action.REJECT
    assert decide(box(1000), used(999), 1).action is Action.ACCEPT
    assert decide(box(1000), used(999), 2).action is Action.REJECT
    assert decide(box(1000), used(999), 2, boundary=Boundary.INCLUSIVE).action is Action.REJECT


@given(
    limit_bytes=st.integers(0, 10**6),
    limit_messages=st.integers(0, 50),
    used_bytes=st.integers(0, 2 * 10**6),
    used_messages=st.integers(0, 100),
    reserved_bytes=st.integers(0, 10**6),
    reserved_messages=st.integers(0, 50),
    size=st.one_of(st.none(), st.integers(-1, 10**6)),
    grace=st.sampled_from([Allowance(), Allowance(bytes=1000), Allowance(fraction=Decimal("0.1"))]),
    boundary=st.sampled_from(list(Boundary)),
)
def test_the_ceiling_admits_exactly_what_decide_accepts(
    limit_bytes: int,
    limit_messages: int,
    used_bytes: int,
    used_messages: int,
    reserved_bytes: int,
    reserved_messages: int,
    size: int | None,
    grace: Allowance,
    boundary: Boundary,
) -> None:
    """A Redis script holding room for several hosts decides by the ceiling: it must be decide's rule."""
    limits = Limits(limit_bytes, limit_messages)
    if limits.unlimited:
        return
    usage = Usage(used_bytes, used_messages, 0.0)
    reserved = Reserved(reserved_bytes, reserved_messages)
    decision = decide(Mailbox("a@example.org", limits), usage, size, reserved, grace, boundary=boundary)
    within = ceiling(limits, size, grace, boundary)
    admitted = within.admits(used_bytes + reserved_bytes, used_messages + reserved_messages)
    assert (decision.action is Action.ACCEPT) == admitted, decision
