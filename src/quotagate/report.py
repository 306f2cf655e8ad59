"""Usage per mailbox as plain rows, for tables, JSON and CSV alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from quotagate.forecast import Forecast, describe, forecast
from quotagate.history import DAY, Sample
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
    "forecast",
    "forecast_full_at",
)

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@")


def _percent(used: int, limit: int) -> float | None:
    return round(100 * used / limit, 1) if limit else None


def _maildirsize(r: Reading, files: tuple[int, int]) -> str:
    """Whether the root's maildirsize agrees with the files (``files``: their bytes and messages
    after folder rules), and the folders that keep one of their own (Exim's appendfile without
    ``quota_directory``), which explain a mismatch."""
    info = r.usage.maildirsize
    own = [(f.name, *f.own_maildirsize) for f in r.usage.folders if f.own_maildirsize is not None]
    if info is None:
        return "" if not own else "none at the root; " + _own_files(own)
    if info.agrees_with(*files):
        return "agrees" if not own else "agrees; " + _own_files(own)
    text = f"disagrees: claims {info.bytes} bytes, {info.messages} messages"
    if r.bytes > files[0] or r.messages > files[1]:  # more than the files: what the claims gave
        return (
            f"{text}, more than the files ({files[0]} bytes, {files[1]} messages): counted as claimed,"
            " as the delivery agent goes by it until it claims to be over the limit"
        )
    if not own:
        return text
    claims = (info.bytes + sum(b for _, b, _ in own), info.messages + sum(m for _, _, m in own))
    together = "together they agree" if claims == (r.bytes, r.messages) else "together they still disagree"
    return f"{text}; {_own_files(own)}; {together} with the files"


def _own_files(own: list[tuple[str, int, int]]) -> str:
    listed = ", ".join(f"{printable(name)} {b} bytes, {m} messages" for name, b, m in own)
    return (
        f"folders with a maildirsize of their own: {listed} (Exim without quota_directory "
        "counts deliveries to them there, apart from the root's; set quota_directory in the transport)"
    )


def forecasts(
    mailboxes: Sequence[Mailbox],
    readings: Mapping[str, Reading],
    history: Mapping[str, Sequence[Sample]],
    now: float,
) -> dict[str, Forecast | None]:
    """The forecast of every measured mailbox from its history (see :mod:`quotagate.forecast`),
    from what it holds ``now``: a reading is written only when the usage changes (a scan that
    finds a mailbox unchanged writes nothing), so it still holds now, however long ago it was
    taken; anchored at its own time, a mailbox that stopped growing would be "full now"."""
    out: dict[str, Forecast | None] = {}
    for m in mailboxes:
        r = readings.get(m.address)
        if r is not None and r.state is not State.UNKNOWN:
            at = max(r.measured_at, now)
            out[m.address] = forecast(history.get(m.address, ()), m.limits, (r.bytes, r.messages), at)
    return out


def rows(
    mailboxes: Sequence[Mailbox],
    readings: Mapping[str, Reading],
    over_only: bool = False,
    predicted: Mapping[str, Forecast | None] | None = None,
    now: float = 0.0,
    accounting: str = "files",
    files: Callable[[Reading], tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """One row per mailbox; ``predicted`` (from :func:`forecasts`) fills the forecast columns,
    ``forecast_full_at`` None when the mailbox is not filling (or its history is too short);
    ``accounting`` names the profile (``[spool] accounting``) its usage and state were counted under,
    ``files`` gives a reading's files after folder rules (by default what it counts)."""
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
                "maildirsize": _maildirsize(r, files(r) if files else (r.bytes, r.messages)),
                "measured_at": r.measured_at,
                "reason": r.reason,
                "folders": [{"name": f.name, "bytes": f.bytes, "messages": f.messages} for f in r.usage.folders],
            }
        row.update(
            quota_bytes=m.limits.bytes, quota_messages=m.limits.messages, enabled=m.enabled, accounting=accounting
        )
        f = (predicted or {}).get(m.address)
        known = row["state"] != State.UNKNOWN.value
        row.update(forecast=describe(f, now) if known else None, forecast_full_at=f.full_at if f else None)
        if not over_only or row["state"] == State.OVER.value:
            out.append(row)
    return out


def selected(
    data: Sequence[dict[str, Any]],
    domains: Sequence[str] = (),
    above: Decimal | None = None,
    filling_days: float | None = None,
    now: float = 0.0,
) -> list[dict[str, Any]]:
    """The rows of mailboxes in ``domains`` (any, when empty), at or above ``above`` (a fraction)
    of a limit, forecast to be full within ``filling_days`` (full ones included)."""
    wanted = {d.lower() for d in domains}
    out = []
    for row in data:
        if wanted and str(row["address"]).rpartition("@")[2] not in wanted:
            continue
        if above is not None and (row["percent"] is None or Decimal(str(row["percent"])) < above * 100):
            continue
        full_at = row["forecast_full_at"]
        if filling_days is not None and (full_at is None or full_at > now + filling_days * DAY):
            continue
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
