"""Telling a misread spool layout from real change.

A spool read with the wrong ``[spool] format``, ``layout`` or ``maildir_subdir`` does not fail: a
Maildir looked for one level too high measures empty, a Maildir taken for an mbox home measures as
another format, and either clears every over-quota flag with exit 0. Unlike a vanished spool (see
:mod:`quotagate.outage`) such a scan is not refused, since a site may really empty its mailboxes
or move them to another format, but it says so loudly, once, with the counts and where to look.
Decided on readings alone, without I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from quotagate.model import Format, Reading
from quotagate.outage import was_measured
from quotagate.usage.maildir import LAYOUT_HINT

# Fewer known mailboxes than this show no pattern: two of three emptied is their owners' doing.
MIN_EMPTIED_OF = 4
# One mailbox changing format is its owner's migration; every one of two or more is the layout.
MIN_REFORMATTED = 2


def emptied(previous: Mapping[str, Reading], current: Mapping[str, Reading]) -> tuple[int, int]:
    """Mailboxes that hold no message now but held mail at the last scan, and the mailboxes known
    now (unknown ones measured nothing either way)."""
    known = [(address, r) for address, r in current.items() if r.usage.known]
    count = 0
    for address, now in known:
        before = previous.get(address)
        if now.usage.all_messages == 0 and before is not None and before.usage.known and before.usage.all_messages:
            count += 1
    return count, len(known)


def reformatted(previous: Mapping[str, Reading], current: Mapping[str, Reading]) -> Counter[tuple[str, str]]:
    """``(format before, format now)`` of each mailbox measured at both scans, counted."""
    changes: Counter[tuple[str, str]] = Counter()
    for address, before in previous.items():
        now = current.get(address)
        if now is not None and was_measured(before) and was_measured(now):
            changes[(before.usage.format.value, now.usage.format.value)] += 1
    return changes


def not_found(current: Mapping[str, Reading]) -> tuple[int, int]:
    """Mailboxes known to be missing on disk, and the mailboxes known."""
    known = [r for r in current.values() if r.usage.known]
    return sum(r.usage.format is Format.MISSING for r in known), len(known)


def misread_warning(previous: Mapping[str, Reading], current: Mapping[str, Reading]) -> str | None:
    """One line saying why this scan looks like a misread layout, or None when it does not.

    It does when more than half of at least :data:`MIN_EMPTIED_OF` known mailboxes measure empty
    while they held mail at the last scan (or, at a first scan, are not found on disk at all), or
    when every mailbox measured at both scans (at least :data:`MIN_REFORMATTED`) changed format.
    """
    problems = []
    count, known = emptied(previous, current)
    if known >= MIN_EMPTIED_OF and 2 * count > known:
        problems.append(f"{count} of {known} mailboxes measured empty that held mail at the last scan")
    if not previous:
        count, known = not_found(current)
        if known >= MIN_EMPTIED_OF and 2 * count > known:
            problems.append(f"{count} of {known} mailboxes not found on disk at a first scan")
    changes = reformatted(previous, current)
    both = sum(changes.values())
    moved = {change: n for change, n in changes.items() if change[0] != change[1]}
    if both >= MIN_REFORMATTED and sum(moved.values()) == both:
        how = ", ".join(f"{old} -> {new}" for old, new in sorted(moved))
        problems.append(f"{both} of {both} mailboxes changed format since the last scan ({how})")
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ": is the spool read right? Check [spool] format, layout and maildir_subdir"
        + " (expected once after changing them or moving the mail)"
    )


def layout_hint(current: Mapping[str, Reading]) -> str | None:
    """One line for the mailboxes read as Maildir++ that hold plain sub-directories with cur/ or
    new/ (Dovecot ``LAYOUT=fs`` folders: the mailbox is unknown), or None when there are none."""
    found = sorted(a for a, r in current.items() if LAYOUT_HINT in (r.usage.error or ""))
    if not found:
        return None
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (
        f"{len(found)} mailboxes hold sub-directories with cur/ or new/ and are unknown ({shown}):"
        ' Dovecot LAYOUT=fs folders? Set [spool] maildir_layout = "fs" (or, for a Maildir one level down,'
        " [spool] maildir_subdir)"
    )
