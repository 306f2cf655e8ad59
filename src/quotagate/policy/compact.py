"""Limits and usage of every mailbox in compact columns, brought up to date by the store's changes.

A dict of :class:`Mailbox` and :class:`Reading` objects costs about 0.9 kB a mailbox and, rebuilt
in full on every refresh, holds the interpreter for long enough to stall answers. Here a mailbox is
a row number in an address table, and its limits and usage are items of typed arrays; a path is a
slice of one byte string. No I/O.

Versions share what only grows: the address table, the addresses by row and the path bytes. A
refresh appends to them, and an older version ignores rows and bytes past its own. The columns
are shared too, chunk by chunk, and a refresh copies only the chunks it writes: the version the
event loop reads never changes under it, and a new one is handed over whole (one assignment).
"""

from __future__ import annotations

import functools
import itertools
from array import array
from collections.abc import Callable, Iterator, Mapping, MutableSequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from quotagate.model import FolderUsage, Format, Limits, Mailbox, MailboxUsage, MaildirsizeInfo, Reading, State
from quotagate.store.base import Changes

_STATES = (None, *State)  # code 0: no reading
_STATE_CODES = {s: i for i, s in enumerate(_STATES) if s is not None}
_FORMATS = tuple(Format)
_FORMAT_CODES = {f: i for i, f in enumerate(_FORMATS)}
_NO_PATH = -1
_LENGTH_BITS = 32  # a path's place: offset << 32 | length
# 65,536 rows a chunk: 512 kB of 8-byte items, copied in a fraction of a millisecond. (Chunks of
# 256 kB, near glibc's threshold for giving a block its own mapping, left 30 MB more RSS at a
# million mailboxes.)
_CHUNK_BITS = 16
_Item = TypeVar("_Item")


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


@functools.cache
def _blank_array(typecode: str, size: int) -> array[Any]:
    return array(typecode, bytes(size * array(typecode).itemsize))


class _Column(Generic[_Item]):
    """One column of every row, in chunks of ``2**_CHUNK_BITS`` rows that versions share until
    one of them writes there (copy on write).

    One flat array would be copied whole by every refresh: 8 MB at a million mailboxes, a single
    C call of about 3.5 ms during which the event loop cannot answer. Here a refresh copies only
    the chunks it writes, each in a short call the loop can get in between. Every chunk but the
    last is full; a blank chunk (zeros, or ``blank`` objects) is shared by every column of its kind
    and copied before it is written, like any chunk this version did not make.
    """

    __slots__ = ("_blank", "_chunks", "_length", "_own")

    def __init__(self, blank: MutableSequence[_Item]) -> None:
        self._blank = blank  # a full chunk of the empty value; never written
        self._chunks: list[MutableSequence[_Item]] = []
        self._length = 0
        self._own: set[int] = set()  # chunks this version made, which it may write in place

    @classmethod
    def of(cls, typecode: str) -> _Column[Any]:
        """A column of numbers (an ``array`` type code), zero where not written."""
        return cls(_blank_array(typecode, 1 << _CHUNK_BITS))

    @classmethod
    def objects(cls, blank: _Item) -> _Column[_Item]:
        """A column of objects, ``blank`` where not written."""
        return cls([blank] * (1 << _CHUNK_BITS))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, row: int) -> _Item:
        return self._chunks[row >> _CHUNK_BITS][row & ((1 << _CHUNK_BITS) - 1)]

    def __setitem__(self, row: int, value: _Item) -> None:
        """Write one row; only while this version is being built, before anyone reads it. A value
        it already has is not written: that would copy a chunk for nothing (a reading's new
        numbers leave its limits, path, error and folders as they were)."""
        at, index = row >> _CHUNK_BITS, row & ((1 << _CHUNK_BITS) - 1)
        chunk = self._chunks[at]
        if chunk[index] == value:
            return
        if at not in self._own:
            chunk = self._chunks[at] = chunk[:]
            self._own.add(at)
        chunk[index] = value

    def __iter__(self) -> Iterator[_Item]:
        return itertools.chain.from_iterable(self._chunks)

    def __del__(self) -> None:
        # A chunk at a time, with the interpreter free to switch in between: a column of objects
        # let go of in one piece drops a million references in one call, 20 ms at a million rows.
        chunks = self._chunks
        while chunks:
            chunks.pop()

    def grown(self, size: int, fresh: bool) -> _Column[_Item]:
        """The next version, ``size`` rows long (blank when ``fresh``), sharing this one's chunks;
        this one may no longer be written in place."""
        self._own.clear()
        column = _Column(self._blank)
        chunks = column._chunks
        if not fresh:
            chunks += self._chunks
            column._length = self._length
        full = 1 << _CHUNK_BITS
        while column._length < size:
            if chunks and len(chunks[-1]) < full:  # a short last chunk: a longer copy of it
                added = min(full - len(chunks[-1]), size - column._length)
                chunks[-1] = chunks[-1] + self._blank[:added]  # type: ignore[operator]
            else:
                added = min(full, size - column._length)
                chunks.append(self._blank if added == full else self._blank[:added])
            if chunks[-1] is not self._blank:
                column._own.add(len(chunks) - 1)
            column._length += added
        return column


@dataclass(frozen=True)
class _MailboxColumns:
    present: _Column[int] = field(default_factory=lambda: _Column.of("b"))
    quota_bytes: _Column[int] = field(default_factory=lambda: _Column.of("q"))
    quota_messages: _Column[int] = field(default_factory=lambda: _Column.of("q"))
    enabled: _Column[int] = field(default_factory=lambda: _Column.of("b"))
    path: _Column[int] = field(default_factory=lambda: _Column.of("q"))
    count: int = 0


@dataclass(frozen=True)
class _ReadingColumns:
    state: _Column[int] = field(default_factory=lambda: _Column.of("b"))  # 0: none
    format: _Column[int] = field(default_factory=lambda: _Column.of("b"))
    bytes: _Column[int] = field(default_factory=lambda: _Column.of("q"))
    messages: _Column[int] = field(default_factory=lambda: _Column.of("q"))
    measured_at: _Column[float] = field(default_factory=lambda: _Column.of("d"))
    agrees: _Column[int] = field(default_factory=lambda: _Column.of("b"))  # its maildirsize agreed with the files
    path: _Column[int] = field(default_factory=lambda: _Column.of("q"))
    error: _Column[str | None] = field(default_factory=lambda: _Column.objects(None))  # why it could not be measured
    folders: _Column[tuple[FolderUsage, ...]] = field(default_factory=lambda: _Column.objects(()))  # when loaded
    count: int = 0


_MEMO = 8192  # a generation: about 6 MB of objects
_Made = TypeVar("_Made")
_ABSENT = object()


class _Memo(Generic[_Made]):
    """Objects made from a version's columns for the addresses the request path asked lately, in
    two generations of at most :data:`_MEMO` each: a full one becomes the old one, and an address
    asked again is carried over from it. Emptied whole instead, a memo made every busy mailbox
    again each time the others filled it (with 10,000 mailboxes asked at random, most look-ups)."""

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.new: dict[str, _Made] = {}
        self.old: dict[str, _Made] = {}

    def __len__(self) -> int:
        return len(self.new) + len(self.old)

    def get(self, address: str, make: Callable[[str], _Made]) -> _Made:
        """``make(address)``, made once while a generation holds it."""
        found = self.new.get(address, _ABSENT)  # not a KeyError: half the look-ups may miss here
        if found is not _ABSENT:
            return found  # type: ignore[return-value]
        found = self.old.get(address, _ABSENT)
        if found is _ABSENT:
            found = make(address)
        if len(self.new) >= _MEMO:
            self.old, self.new = self.new, {}
        self.new[address] = found  # type: ignore[assignment]
        return found  # type: ignore[return-value]


@dataclass(frozen=True)
class Table:
    """One version of every mailbox's limits and usage; immutable once built."""

    shared: _Shared = field(default_factory=_Shared)
    boxes: _MailboxColumns = field(default_factory=_MailboxColumns)
    usage: _ReadingColumns = field(default_factory=_ReadingColumns)
    # What was looked up in this version, as objects: made once for a busy mailbox, not at each
    # request (a version never changes; a new one starts empty). At most 2 * _MEMO of each.
    _mailbox_memo: _Memo[Mailbox | None] = field(default_factory=_Memo, init=False, repr=False, compare=False)
    _reading_memo: _Memo[Reading | None] = field(default_factory=_Memo, init=False, repr=False, compare=False)

    def _row(self, address: str, present: _Column[int]) -> int | None:
        row = self.shared.find(address)
        if row < 0 or row >= len(present) or not present[row]:
            return None
        return row

    def _mailbox(self, address: str) -> Mailbox | None:
        b = self.boxes
        row = self._row(address, b.present)
        if row is None:
            return None
        limits = Limits(b.quota_bytes[row], b.quota_messages[row])
        return Mailbox(address, limits, bool(b.enabled[row]), self.shared.path(b.path[row]))

    def _reading(self, address: str) -> Reading | None:
        """The reading as the request path needs it: totals, state, path, folders when loaded,
        and the maildirsize only as far as whether it agreed with the files."""
        u = self.usage
        row = self._row(address, u.state)
        if row is None:
            return None
        b, m = u.bytes[row], u.messages[row]
        info = MaildirsizeInfo(b, m, "") if u.agrees[row] else None
        usage = MailboxUsage(_FORMATS[u.format[row]], u.folders[row], None, u.error[row], info)
        state = _STATES[u.state[row]]
        assert state is not None
        return Reading(address, self.shared.path(u.path[row]) or "", usage, b, m, state, u.measured_at[row])

    def objects(self) -> tuple[_Column[Any], ...]:
        """The columns of objects: freeing them takes a while (see :meth:`_Column.__del__`)."""
        return self.usage.error, self.usage.folders

    def _addresses(self, present: _Column[int]) -> Iterator[str]:
        for row, here in enumerate(present):
            if here:
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
        table = self.table
        found = table._mailbox_memo.get(address, table._mailbox)
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
        table = self.table
        found = table._reading_memo.get(address, table._reading)
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


def mailbox_changes(before: Table, after: Table) -> tuple[list[Mailbox], list[str]] | None:
    """The mailboxes ``after`` wrote (added, or with other limits, enabled or path) and removed,
    next to ``before``; None when ``after`` started a generation of its own (other rows).

    For a load that read every mailbox (an admin's table has no change stamp): what follows the
    mailboxes (the live tracker) then gets only these, not every mailbox again. Equal chunks are
    compared in C; only the rows of a chunk that differs are looked at one by one.
    """
    if after.shared is not before.shared:
        return None
    old, new = before.boxes, after.boxes
    rows: set[int] = set()
    for name in ("present", "quota_bytes", "quota_messages", "enabled", "path"):
        rows.update(_differing(getattr(old, name), getattr(new, name)))
    written, removed = [], []
    for row in sorted(rows):
        address = after.shared.name(row)
        if row < len(new.present) and new.present[row]:
            mailbox = after._mailbox(address)  # not the look-up cache: that is for requests
            assert mailbox is not None
            written.append(mailbox)
        elif row < len(old.present) and old.present[row]:
            removed.append(address)
    return written, removed


def _differing(before: _Column[Any], after: _Column[Any]) -> Iterator[int]:
    """The rows whose values differ between two versions of a column (a row only one of them has
    included)."""
    full = 1 << _CHUNK_BITS
    for at, (old, new) in enumerate(itertools.zip_longest(before._chunks, after._chunks)):
        if old is new or old == new:
            continue
        base = at * full
        for index, (a, b) in enumerate(itertools.zip_longest(old or (), new or ())):
            if a != b:
                yield base + index


def _mailboxes_updated(shared: _Shared, old: _MailboxColumns, changes: Changes, size: int) -> _MailboxColumns:
    fresh = changes.mailboxes_full
    present = old.present.grown(size, fresh)
    quota_bytes = old.quota_bytes.grown(size, fresh)
    quota_messages = old.quota_messages.grown(size, fresh)
    enabled = old.enabled.grown(size, fresh)
    path = old.path.grown(size, fresh)
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
    state = old.state.grown(size, fresh)
    format_ = old.format.grown(size, fresh)
    bytes_ = old.bytes.grown(size, fresh)
    messages = old.messages.grown(size, fresh)
    measured_at = old.measured_at.grown(size, fresh)
    agrees = old.agrees.grown(size, fresh)
    path = old.path.grown(size, fresh)
    error = old.error.grown(size, fresh)
    folders = old.folders.grown(size, fresh)
    count = 0 if fresh else old.count
    for address in changes.removed_readings:
        row = shared.find(address)
        if 0 <= row < len(state) and state[row]:
            state[row] = 0
            count -= 1
            error[row] = None
            folders[row] = ()
    old_path = old.path
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
        error[row] = r.usage.error
        folders[row] = r.usage.folders
    return _ReadingColumns(state, format_, bytes_, messages, measured_at, agrees, path, error, folders, count)


__all__ = ["Mailboxes", "Readings", "Table", "mailbox_changes", "updated"]
