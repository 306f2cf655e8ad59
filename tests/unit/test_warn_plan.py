"""Which warnings are due: once per upward crossing, re-armed 5 points below (pure)."""

from __future__ import annotations

from decimal import Decimal

from quotagate.model import Limits
from quotagate.warn import FILLING, fullness, outlook, plan

T = [Decimal("0.8"), Decimal("0.9"), Decimal("0.95")]
REARM = Decimal("0.05")


def due(share: str, sent: set[str], days: float | None = None) -> tuple[list[tuple[str, list[str]]], list[str]]:
    p = plan(Decimal(share), days, sent, T, REARM, 7)
    return p.mails, p.rearm


def test_one_mail_per_crossing_naming_the_highest() -> None:
    assert due("0.79", set()) == ([], [])
    assert due("0.8", set()) == ([("80%", ["80%"])], [])
    assert due("0.85", {"80%"}) == ([], [])
    assert due("0.97", {"80%"}) == ([("95%", ["90%", "95%"])], [])
    assert due("1.2", set()) == ([("95%", ["80%", "90%", "95%"])], [])  # a lowered limit: full at once


def test_hysteresis() -> None:
    assert due("0.76", {"80%"}) == ([], [])  # hovering just below: stays sent
    assert due("0.7499", {"80%"}) == ([], ["80%"])  # 5 points below: re-armed
    assert due("0.84", {"80%", "90%"}) == ([], ["90%"])


def test_filling() -> None:
    assert due("0.5", set(), days=6.5) == ([(FILLING, [FILLING])], [])
    assert due("0.5", {FILLING}, days=3) == ([], [])
    assert due("0.5", {FILLING}, days=10) == ([], [])  # not yet twice the horizon
    assert due("0.5", {FILLING}, days=15) == ([], [FILLING])
    assert due("0.5", {FILLING}, days=None) == ([], [FILLING])
    assert due("1.0", set(), days=0) == ([("95%", ["80%", "90%", "95%"])], [])  # full: no "will be full"


def test_fullness_takes_the_fuller_limit() -> None:
    assert fullness(Limits(1000, 10), 100, 9) == Decimal("0.9")
    assert fullness(Limits(1000), 950, 10**6) == Decimal("0.95")
    assert fullness(Limits(), 10, 10) is None


def test_the_outlook_counts_mailboxes_past_each_threshold_and_filling_within_each_horizon() -> None:
    states = [
        (Decimal("0.5"), None),  # not filling
        (Decimal("0.85"), 20.0),
        (Decimal("0.92"), 6.5),
        (Decimal("0.96"), 0.5),
        (Decimal("1.1"), None),  # over already: full within every horizon, forecast or not
    ]
    o = outlook(states, T)
    assert o.measured == 5
    assert o.above == {"80%": 4, "90%": 3, "95%": 2}
    assert o.full_within == {1: 2, 7: 3, 30: 4}
    assert outlook([], T).full_within == {1: 0, 7: 0, 30: 0}
