"""Usage per mailbox as plain rows, for tables, JSON and CSV alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quotagate.model import Mailbox, Reading, State
from quotagate.text import printable

COLUMNS = (
    "address",
    "bytes",
    "messages",
    "quota_bytes",
    "quota_messages",
    "percent",
    "state",
    "enabled",
    "format",
    "maildirsize",
    "accounting",
    "measured_at",
    "reason",
)

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@")


def _percent(used: int, limit: int) -> float | None:
    return round(100 * used / limit, 1) if limit else None


def _maildirsize(r: Reading) -> str:
    info = r.usage.maildirsize
    if info is None:
        return ""
    if info.agrees_with(r.bytes, r.messages):
        return "agrees"
    return f"disagrees: claims {info.bytes} bytes, {info.messages} messages"


def rows(
    mailboxes: Sequence[Mailbox], readings: Mapping[str, Reading], over_only: bool = False, accounting: str = "files"
) -> list[dict[str, Any]]:
    """One row per mailbox; ``accounting`` names the profile (``[spool] accounting``) its usage
    and state were counted under."""
    out = []
    for m in mailboxes:
        r = readings.get(m.address)
        if r is None:
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update(address=m.address, state=State.UNKNOWN.value, reason="not scanned yet")
        else:
            known = r.state is not State.UNKNOWN
            percents = [p for p in (_percent(r.bytes, m.limits.bytes), _percent(r.messages, m.limits.messages)) if p]
            row = {
                "address": m.address,
                "bytes": r.bytes if known else None,
                "messages": r.messages if known else None,
                "percent": max(percents) if percents and known else None,
                "state": r.state.value,
                "format": r.usage.format.value,
                "maildirsize": _maildirsize(r),
                "measured_at": r.measured_at,
                "reason": r.reason,
                "folders": [{"name": f.name, "bytes": f.bytes, "messages": f.messages} for f in r.usage.folders],
            }
        row.update(
            quota_bytes=m.limits.bytes, quota_messages=m.limits.messages, enabled=m.enabled, accounting=accounting
        )
        if not over_only or row["state"] == State.OVER.value:
            out.append(row)
    return out


def csv_cell(value: Any) -> Any:
    """A value as the CSV shows it; numbers, booleans and None stay as they are.

    Text is escaped as everywhere else (:func:`printable`): a name with a line break stays on
    its record's line and nothing in it can drive a terminal the CSV is printed on. Text that a
    spreadsheet would run as a formula gets a leading ``'``, as OWASP advises: the CSV is for
    people and spreadsheets, JSON is the exact form of the stored names.
    """
    if not isinstance(value, str):
        return value
    shown = printable(value)
    return "'" + shown if shown.startswith(_FORMULA_START) else shown
