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
from collections.abc import Callable, Iterator, Mapping
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


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class _Shared:
    """What every version of one generation shares, and only ever grows: the addresses (as one
    byte string, found through an open-addressing table of row numbers, with no object per
    mailbox) and the paths (one byte string; a column holds each one's place).

    Written by one loader thread while the loop reads: a new row's bytes and place are there
    before a slot names it, and a grown slot table is swapped in whole.
    """

    def __init__(self) -> None:
        self.slots = array("i", bytes(4 * 1024))  # row + 1; 0: empty
        self.places = array("q")  # where each row's address is in text
        self.text = bytearray()
        self.paths = bytearray()

    def __len__(self) -> int:
        return len(self.places)

    def _probe(self, slots: array[int], raw: bytes) -> tuple[int, int]:
        """(slot, row) for ``raw``; row -1 when it is not there (slot: where it would go)."""
        mask = len(slots) - 1
        i = hash(raw) & mask
        places, text = self.places, self.text
        while True:
            row = slots[i] - 1
            if row < 0:
                return i, -1
            place = places[row]
            start = place >> _LENGTH_BITS
            if text[start : start + (place & 0xFFFFFFFF)] == raw:
                return i, row
            i = (i + 1) & mask

    def find(self, address: str) -> int:
        """The row of ``address``, or -1."""
        return self._probe(self.slots, _encoded(address))[1]

    def row(self, address: str) -> int:
        """The row of ``address``, given one if it has none."""
        raw = _encoded(address)
        slot, found = self._probe(self.slots, raw)
        if found >= 0:
            return found
        found = len(self.places)
        self.places.append(len(self.text) << _LENGTH_BITS | len(raw))
        self.text += raw
        self.slots[slot] = found + 1
        if 2 * len(self.places) > len(self.slots):
            self._grow()
        return found

    def _grow(self) -> None:
        slots = array("i", bytes(8 * len(self.slots)))
        mask = len(slots) - 1
        for row in range(len(self.places)):
            i = hash(bytes(self._raw(row))) & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = row + 1
        self.slots = slots

    def _raw(self, row: int) -> bytearray:
        place = self.places[row]
        start = place >> _LENGTH_BITS
        return self.text[start : start + (place & 0xFFFFFFFF)]

    def name(self, row: int) -> str:
        return self._raw(row).decode("utf-8", "surrogatepass")

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
        raw = _encoded(path)
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


_MEMO = 8192  # about 6 MB of objects
_Made = TypeVar("_Made")


def _memoized(memo: dict[str, _Made], address: str, make: Callable[[str], _Made]) -> _Made:
    """``make(address)``, made once while ``memo`` holds it (emptied when it is full)."""
    try:
        return memo[address]
    except KeyError:
        pass
    if len(memo) >= _MEMO:
        memo.clear()
    found = memo[address] = make(address)
    return found


@dataclass(frozen=True)
class Table:
    """One version of every mailbox's limits and usage; immutable once built."""

    shared: _Shared = field(default_factory=_Shared)
    boxes: _MailboxColumns = field(default_factory=_MailboxColumns)
    usage: _ReadingColumns = field(default_factory=_ReadingColumns)
    # What was looked up in this version, as objects: made once for a busy mailbox, not at each
    # request (a version never changes; a new one starts empty). At most _MEMO of each.
    _mailbox_memo: dict[str, Mailbox | None] = field(default_factory=dict, init=False, repr=False, compare=False)
    _reading_memo: dict[str, Reading | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _row(self, address: str, present: array[int]) -> int | None:
        row = self.shared.find(address)
        if row < 0 or row >= len(present) or not present[row]:
            return None
        return row

    def mailbox(self, address: str) -> Mailbox | None:
        return _memoized(self._mailbox_memo, address, self._mailbox)

    def _mailbox(self, address: str) -> Mailbox | None:
        b = self.boxes
        row = self._row(address, b.present)
        if row is None:
            return None
        limits = Limits(b.quota_bytes[row], b.quota_messages[row])
        return Mailbox(address, limits, bool(b.enabled[row]), self.shared.path(b.path[row]))

    def reading(self, address: str) -> Reading | None:
        """The reading as the request path needs it: totals, state, path, folders when loaded,
        and the maildirsize only as far as whether it agreed with the files."""
        return _memoized(self._reading_memo, address, self._reading)

    def _reading(self, address: str) -> Reading | None:
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
        for row in range(len(present)):
            if present[row]:
                yield self.shared.name(row)

    @property
    def mailboxes(self) -> Mailboxes:
        return Mailboxes(self)

    @property
    def readings(self) -> Readings:
        return Readings(self)


class Mailboxes(Mapping[str, Mailbox]):
    """A table's mailboxes, as the dict the request path reads: :meth:`get` (the request path)
    through the table's memo, ``[]`` and the whole-table views (``values()``) made anew, so that
    going through every mailbox does not push out the busy ones."""

    __slots__ = ("table",)

    def __init__(self, table: Table) -> None:
        self.table = table

    def get(self, address: str, default: Mailbox | None = None) -> Mailbox | None:  # type: ignore[override]
        found = self.table.mailbox(address)
        return default if found is None else found

    def __getitem__(self, address: str) -> Mailbox:
        found = self.table._mailbox(address)
        if found is None:
            raise KeyError(address)
        return found

    def __iter__(self) -> Iterator[str]:
        return self.table._addresses(self.table.boxes.present)

    def __len__(self) -> int:
        return self.table.boxes.count


class Readings(Mapping[str, Reading]):
    """A table's readings, as the dict the request path reads (see :class:`Mailboxes`)."""

    __slots__ = ("table",)

    def __init__(self, table: Table) -> None:
        self.table = table

    def get(self, address: str, default: Reading | None = None) -> Reading | None:  # type: ignore[override]
        found = self.table.reading(address)
        return default if found is None else found

    def __getitem__(self, address: str) -> Reading:
        found = self.table._reading(address)
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
    return len(shared) > 2 * live + 1024 or len(shared.paths) > 4 * (live * 64 + 65536)


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
    size = len(shared)
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
        row = shared.find(address)
        if 0 <= row < len(present) and present[row]:
            present[row] = 0
            count -= 1
    old_path = old.path
    for m in changes.mailboxes:
        row = shared.row(m.address)
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
        row = shared.find(address)
        if 0 <= row < len(state) and state[row]:
            state[row] = 0
            count -= 1
    old_path = old.path
    new_errors: dict[str, str] = {}
    new_folders: dict[str, tuple[FolderUsage, ...]] = {}
    for r in changes.readings:
        row = shared.row(r.address)
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
