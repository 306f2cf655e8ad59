"""The vanished-mailbox rule, pure: which mailboxes count as gone, and when that is an outage."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from quotagate.model import Format, MailboxUsage, Reading, State
from quotagate.outage import MIN_VANISHED, left_problem, vanished, vanished_problem


def reading(address: str, fmt: Format = Format.MAILDIR, error: str | None = None) -> Reading:
    state = State.UNKNOWN if error else State.OK
    return Reading(address, f"/spool/{address}", MailboxUsage(fmt, error=error), 0, 0, state, 0.0)


def site(n: int) -> dict[str, Reading]:
    return {f"u{i}": reading(f"u{i}") for i in range(n)}


TEN = Decimal("0.1")


def test_gone_means_measured_before_and_now_missing_on_disk_or_from_the_directory() -> None:
    previous = {
        "kept": reading("kept"),
        "deleted": reading("deleted"),
        "left": reading("left"),
        "never-created": reading("never-created", Format.MISSING),
        "was-unknown": reading("was-unknown", error="Permission denied"),
    }
    current = {
        "kept": reading("kept"),
        "deleted": reading("deleted", Format.MISSING),
        "never-created": reading("never-created", Format.MISSING),
        "was-unknown": reading("was-unknown", Format.MISSING),
        "new": reading("new", Format.MISSING),
    }
    assert vanished(previous, current) == (["left"], ["deleted"])


def test_one_vanished_mailbox_is_never_an_outage_however_small_the_site() -> None:
    assert MIN_VANISHED == 2
    previous = site(2)
    assert vanished_problem(previous, {"u1": previous["u1"]}, TEN) is None
    assert vanished_problem(previous, {}, TEN) is not None


def test_more_than_the_share_is_an_outage_the_share_itself_is_not() -> None:
    previous = site(40)
    four_gone = {a: r for a, r in previous.items() if a not in {"u0", "u1", "u2", "u3"}}
    assert vanished_problem(previous, four_gone, TEN) is None  # 4 of 40 = 10%
    five_gone = {a: r for a, r in four_gone.items() if a != "u4"}
    problem = vanished_problem(previous, five_gone, TEN)
    assert problem is not None and "5 of 40" in problem and "10%" in problem


def test_the_share_counts_only_mailboxes_measured_before() -> None:
    previous = site(10) | {f"m{i}": reading(f"m{i}", Format.MISSING) for i in range(100)}
    current = {a: r for a, r in previous.items() if a not in {"u0", "u1"}}
    assert vanished_problem(previous, current, TEN) is not None  # 2 of 10 measured, not 2 of 110


def test_the_first_scan_and_a_share_of_100_percent_never_refuse() -> None:
    assert vanished_problem({}, {}, TEN) is None
    assert vanished_problem(site(10), {}, Decimal(1)) is None


@given(
    measured=st.integers(0, 60),
    unmeasured=st.integers(0, 20),
    leaving=st.sets(st.integers(0, 90)),
    share=st.sampled_from([Decimal(0), TEN, Decimal("0.5"), Decimal(1)]),
)
def test_left_problem_says_what_vanished_problem_says_of_the_directory_without_them(
    measured: int, unmeasured: int, leaving: set[int], share: Decimal
) -> None:
    """The daemon's refresh weighs only the mailboxes that left (some never tracked, some never
    measured): the same verdict as weighing the whole directory without them."""
    previous = {**site(measured), **{f"n{i}": reading(f"n{i}", Format.MISSING) for i in range(unmeasured)}}
    names = [f"u{i}" if i % 3 else f"n{i}" for i in leaving]
    current = {a: r for a, r in previous.items() if a not in names}
    assert left_problem(previous, names, share) == vanished_problem(previous, current, share)
