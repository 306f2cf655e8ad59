"""Which warnings a mailbox is due, in pure functions: thresholds with hysteresis, and "filling".

A threshold is sent once when usage rises to it, whatever raised it (deliveries, a restored
folder, a recalculation, a lowered limit), and re-armed only once usage drops ``rearm`` below
it: a mailbox hovering at 80% gets one warning, not one per scan. Crossing several thresholds
at once is one crossing: one mail, naming the highest, and every one crossed marked as sent.
"Filling" is sent once when the forecast says full within ``full_within_days``, and re-armed
when it no longer says so within twice that (or at all).

What was sent lives in the store's ledger (``sent``), so restarts and other hosts agree.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from quotagate.model import Limits

FILLING = "filling"


def threshold_key(threshold: Decimal) -> str:
    """A threshold as the ledger and the X-Quotagate-Warning header name it: ``"90%"``."""
    return f"{float(threshold * 100):g}%"


def fullness(limits: Limits, bytes_: int, messages: int) -> Decimal | None:
    """The fuller of the two limits as a fraction (None when unlimited)."""
    shares = [Decimal(used) / limit for used, limit in ((bytes_, limits.bytes), (messages, limits.messages)) if limit]
    return max(shares) if shares else None


@dataclass(frozen=True)
class Plan:
    """What to do for one mailbox: mails to send (each with the ledger keys it claims), keys to re-arm."""

    mails: list[tuple[str, list[str]]] = field(default_factory=list)
    rearm: list[str] = field(default_factory=list)


def plan(
    share: Decimal,
    days_left: float | None,
    sent: Collection[str],
    thresholds: Sequence[Decimal],
    rearm: Decimal,
    full_within_days: float,
) -> Plan:
    """The warnings due at usage ``share`` (a fraction) and forecast ``days_left`` (None: not filling)."""
    ordered = sorted(set(thresholds))
    crossed = [threshold_key(t) for t in ordered if share >= t and threshold_key(t) not in sent]
    out = Plan()
    if crossed:
        out.mails.append((crossed[-1], crossed))
    out.rearm.extend(threshold_key(t) for t in ordered if threshold_key(t) in sent and share < t - rearm)
    if full_within_days > 0:
        soon = days_left is not None and share < 1 and days_left <= full_within_days
        if soon and FILLING not in sent:
            out.mails.append((FILLING, [FILLING]))
        elif FILLING in sent and (days_left is None or days_left > 2 * full_within_days):
            out.rearm.append(FILLING)
    return out


# Forecast horizons the outlook counts mailboxes for (days).
HORIZONS = (1, 7, 30)


@dataclass(frozen=True)
class Outlook:
    """How many mailboxes are past each threshold and forecast full within each horizon.

    What an alert wants without a label per mailbox: "more than 10 mailboxes will be full this
    week". Mailboxes already full count as full within every horizon.
    """

    measured: int
    above: dict[str, int]
    full_within: dict[int, int]


def outlook(states: Sequence[tuple[Decimal, float | None]], thresholds: Sequence[Decimal]) -> Outlook:
    """Count ``states`` (each a mailbox's fullness and forecast days left, None: not filling)."""
    ordered = sorted(set(thresholds))
    above = {threshold_key(t): sum(share >= t for share, _ in states) for t in ordered}
    full_within = {h: sum(share >= 1 or (left is not None and left <= h) for share, left in states) for h in HORIZONS}
    return Outlook(len(states), above, full_within)
