"""Limits and usage of every mailbox in compact columns, brought up to date by the store's changes.

A dict of :class:`Mailbox` and :class:`Reading` objects costs about 0.9 kB a mailbox and, rebuilt
in full on every refresh, holds the interpreter for long enough to stall answers. Here a mailbox is
a row number in an address table, and its limits and usage are items of typed arrays; a path is a
slice of one byte string. No I/O.

Versions share what only grows: the address table, the addresses by row and the path bytes. A
refresh appends to them, and an older version ignores rows and bytes past its own. The columns
themselves are copied when a refresh changes them: the version the event loop reads never changes
under it, and a new one is handed over whole (one assignment).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from quotagate.model import FolderUsage, Format, Limits, Mailbox, MailboxUsage, MaildirsizeInfo, Reading, State
from quotagate.store.base import Changes

_STATES = (None, *State)  # code 0: no reading
_STATE_CODES = {s: i for i, s in enumerate(_STATES) if s is not None}
_FORMATS = tuple(Format)
_FORMAT_CODES = {f: i for i, f in enumerate(_FORMATS)}
_NO_PATH = -1
_LENGTH_BITS = 32  # a path's place: offset << 32 | length
_Column = TypeVar("_Column", "array[int]", "array[float]")


@dataclass
class _Shared:
    """What every version of one generation shares, and only ever grows."""

    rows: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    paths: bytearray = field(default_factory=bytearray)

    def row(self, address: str) -> int:
        found = self.rows.get(address)
        if found is None:
            found = len(self.names)
            self.names.append(address)  # first: a row the table names is always in the list
            self.rows[address] = found
        return found

    def path(self, place: int) -> str | None:
        if place == _NO_PATH:
            return None
        start = place >> _LENGTH_BITS
        return self.paths[start : start + (place & 0xFFFFFFFF)].decode("utf-8", "surrogatepass")

    def place(self, path: str | None, old: int) -> int:
        """Where ``path`` is kept: where it already was (``old``), or appended."""
        if path is None:
            return _NO_PATH
        if old != _NO_PATH and self.path(old) == path:
            return old
        raw = path.encode("utf-8", "surrogatepass")
        start = len(self.paths)
        self.paths += raw
        return start << _LENGTH_BITS | len(raw)


def _grown(column: _Column, size: int, fresh: bool) -> _Column:
    """A copy of ``column`` (zeros when ``fresh``), ``size`` items long."""
    copy = column[:0] if fresh else column[:]
    missing = size - len(copy)
    if missing > 0:
        copy.frombytes(bytes(missing * copy.itemsize))
    return copy


@dataclass(frozen=True)
class _MailboxColumns:
    present: array[int] = field(default_factory=lambda: array("b"))
    quota_bytes: array[int] = field(default_factory=lambda: array("q"))
    quota_messages: array[int] = field(default_factory=lambda: array("q"))
    enabled: array[int] = field(default_factory=lambda: array("b"))
    path: array[int] = field(default_factory=lambda: array("q"))
    count: int = 0


@dataclass(frozen=True)
class _ReadingColumns:
    state: array[int] = field(default_factory=lambda: array("b"))  # 0: none
    format: array[int] = field(default_factory=lambda: array("b"))
    bytes: array[int] = field(default_factory=lambda: array("q"))
    messages: array[int] = field(default_factory=lambda: array("q"))
    measured_at: array[float] = field(default_factory=lambda: array("d"))
    agrees: array[int] = field(default_factory=lambda: array("b"))  # its maildirsize agreed with the files
    path: array[int] = field(default_factory=lambda: array("q"))
    errors: dict[str, str] = field(default_factory=dict)  # why a mailbox could not be measured (few)
    folders: dict[str, tuple[FolderUsage, ...]] = field(default_factory=dict)  # only when loaded
    count: int = 0


@dataclass(frozen=True)
class Table:
    """One version of every mailbox's limits and usage; immutable once built."""

    shared: _Shared = field(default_factory=_Shared)
    boxes: _MailboxColumns = field(default_factory=_MailboxColumns)
    usage: _ReadingColumns = field(default_factory=_ReadingColumns)

    def _row(self, address: str, present: array[int]) -> int | None:
        row = self.shared.rows.get(address)
        if row is None or row >= len(present) or not present[row]:
            return None
        return row

    def mailbox(self, address: str) -> Mailbox | None:
        b = self.boxes
        row = self._row(address, b.present)
        if row is None:
            return None
        limits = Limits(b.quota_bytes[row], b.quota_messages[row])
        return Mailbox(address, limits, bool(b.enabled[row]), self.shared.path(b.path[row]))

    def reading(self, address: str) -> Reading | None:
        """The reading as the request path needs it: totals, state, path, folders when loaded,
        and the maildirsize only as far as whether it agreed with the files."""
        u = self.usage
        row = self._row(address, u.state)
        if row is None:
            return None
        b, m = u.bytes[row], u.messages[row]
        info = MaildirsizeInfo(b, m, "") if u.agrees[row] else None
        usage = MailboxUsage(_FORMATS[u.format[row]], u.folders.get(address, ()), None, u.errors.get(address), info)
        state = _STATES[u.state[row]]
        assert state is not None
        return Reading(address, self.shared.path(u.path[row]) or "", usage, b, m, state, u.measured_at[row])

    def _addresses(self, present: array[int]) -> Iterator[str]:
        names = self.shared.names
        for row in range(len(present)):
            if present[row]:
                yield names[row]

    @property
    def mailboxes(self) -> Mailboxes:
        return Mailboxes(self)

    @property
    def readings(self) -> Readings:
        return Readings(self)


class Mailboxes(Mapping[str, Mailbox]):
    """A table's mailboxes, as the dict the request path reads (made on each look-up)."""

    __slots__ = ("table",)

    def __init__(self, table: Table) -> None:
        self.table = table

    def get(self, address: str, default: Mailbox | None = None) -> Mailbox | None:  # type: ignore[override]
        found = self.table.mailbox(address)
        return default if found is None else found

    def __getitem__(self, address: str) -> Mailbox:
        found = self.table.mailbox(address)
        if found is None:
            raise KeyError(address)
        return found

    def __iter__(self) -> Iterator[str]:
        return self.table._addresses(self.table.boxes.present)

    def __len__(self) -> int:
        return self.table.boxes.count


class Readings(Mapping[str, Reading]):
    """A table's readings, as the dict the request path reads (made on each look-up)."""

    __slots__ = ("table",)

    def __init__(self, table: Table) -> None:
        self.table = table

    def get(self, address: str, default: Reading | None = None) -> Reading | None:  # type: ignore[override]
        found = self.table.reading(address)
        return default if found is None else found

    def __getitem__(self, address: str) -> Reading:
        found = self.table.reading(address)
        if found is None:
            raise KeyError(address)
        return found

    def __iter__(self) -> Iterator[str]:
        return self.table._addresses(self.table.usage.state)

    def __len__(self) -> int:
        return self.table.usage.count


def _worth_a_new_generation(table: Table, changes: Changes) -> bool:
    """A full load into a generation mostly made of gone rows or replaced paths starts afresh."""
    if not (changes.mailboxes_full and changes.readings_full):
        return False
    live = max(len(changes.mailboxes), len(changes.readings))
    shared = table.shared
    return len(shared.names) > 2 * live + 1024 or len(shared.paths) > 4 * (live * 64 + 65536)


def updated(table: Table | None, changes: Changes) -> Table:
    """The next version: ``table`` with ``changes`` applied (a new table when it is None).

    Builds new columns and leaves ``table`` as it was; only the shared, growing parts see the new
    rows, which ``table`` does not read.
    """
    if table is None or _worth_a_new_generation(table, changes):
        table = Table()
    shared = table.shared
    for m in changes.mailboxes:
        shared.row(m.address)
    for r in changes.readings:
        shared.row(r.address)
    size = len(shared.names)
    boxes, usage = table.boxes, table.usage
    if changes.mailboxes_full or changes.mailboxes or changes.removed_mailboxes:
        boxes = _mailboxes_updated(shared, boxes, changes, size)
    if changes.readings_full or changes.readings or changes.removed_readings:
        usage = _readings_updated(shared, usage, changes, size)
    return Table(shared, boxes, usage)


def _mailboxes_updated(shared: _Shared, old: _MailboxColumns, changes: Changes, size: int) -> _MailboxColumns:
    fresh = changes.mailboxes_full
    present = _grown(old.present, size, fresh)
    quota_bytes = _grown(old.quota_bytes, size, fresh)
    quota_messages = _grown(old.quota_messages, size, fresh)
    enabled = _grown(old.enabled, size, fresh)
    path = _grown(old.path, size, fresh)
    count = 0 if fresh else old.count
    for address in changes.removed_mailboxes:
        row = shared.rows.get(address)
        if row is not None and row < len(present) and present[row]:
            present[row] = 0
            count -= 1
    rows = shared.rows
    old_path = old.path
    for m in changes.mailboxes:
        row = rows[m.address]
        if not present[row]:
            count += 1
        present[row] = 1
        quota_bytes[row] = m.limits.bytes
        quota_messages[row] = m.limits.messages
        enabled[row] = m.enabled
        path[row] = shared.place(m.path, old_path[row] if row < len(old_path) else _NO_PATH)
    return _MailboxColumns(present, quota_bytes, quota_messages, enabled, path, count)


def _readings_updated(shared: _Shared, old: _ReadingColumns, changes: Changes, size: int) -> _ReadingColumns:
    fresh = changes.readings_full
    state = _grown(old.state, size, fresh)
    format_ = _grown(old.format, size, fresh)
    bytes_ = _grown(old.bytes, size, fresh)
    messages = _grown(old.messages, size, fresh)
    measured_at = _grown(old.measured_at, size, fresh)
    agrees = _grown(old.agrees, size, fresh)
    path = _grown(old.path, size, fresh)
    errors: dict[str, str] = {} if fresh else old.errors
    folders: dict[str, tuple[FolderUsage, ...]] = {} if fresh else old.folders
    count = 0 if fresh else old.count
    touched = {r.address for r in changes.readings} | set(changes.removed_readings)
    if not fresh and touched & errors.keys():
        errors = {a: e for a, e in errors.items() if a not in touched}
    if not fresh and folders and touched:
        folders = {a: f for a, f in folders.items() if a not in touched}
    for address in changes.removed_readings:
        row = shared.rows.get(address)
        if row is not None and row < len(state) and state[row]:
            state[row] = 0
            count -= 1
    rows = shared.rows
    old_path = old.path
    new_errors: dict[str, str] = {}
    new_folders: dict[str, tuple[FolderUsage, ...]] = {}
    for r in changes.readings:
        row = rows[r.address]
        if not state[row]:
            count += 1
        state[row] = _STATE_CODES[r.state]
        format_[row] = _FORMAT_CODES[r.usage.format]
        bytes_[row] = r.bytes
        messages[row] = r.messages
        measured_at[row] = r.measured_at
        info = r.usage.maildirsize
        agrees[row] = info is not None and info.agrees_with(r.bytes, r.messages)
        path[row] = shared.place(r.path, old_path[row] if row < len(old_path) else _NO_PATH)
        if r.usage.error is not None:
            new_errors[r.address] = r.usage.error
        if r.usage.folders:
            new_folders[r.address] = r.usage.folders
    if new_errors:
        errors = {**errors, **new_errors}
    if new_folders:
        folders = {**folders, **new_folders}
    return _ReadingColumns(state, format_, bytes_, messages, measured_at, agrees, path, errors, folders, count)


__all__ = ["Mailboxes", "Readings", "Table", "updated"]
