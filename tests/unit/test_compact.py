"""Snapshot versions hold what a dict of the store's rows would, never change once built, and keep
the objects they made for look-ups; a new version never shows an old one's."""

from __future__ import annotations

from typing import TypeVar
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.model import FolderUsage, Format, Limits, Mailbox, MailboxUsage, MaildirsizeInfo, Reading, State
from quotagate.policy import compact
from quotagate.store.base import Changes

ADDRESSES = [f"u{n}@example.org" for n in range(11)]  # rows in three chunks of four, the last one short


def changes(*mailboxes: Mailbox, full: bool = False) -> Changes:
    return Changes(None, full, list(mailboxes), [], False, [], [], None)


def test_a_new_version_answers_with_its_own_numbers_while_the_old_one_keeps_its_own() -> None:
    first = compact.updated(None, changes(Mailbox("a@example.org", Limits(100)), full=True))
    looked_up = first.mailboxes.get("a@example.org")
    assert looked_up is first.mailboxes.get("a@example.org")  # made once
    assert first.mailboxes.get("b@example.org") is None
    second = compact.updated(first, changes(Mailbox("a@example.org", Limits(200)), Mailbox("b@example.org")))
    assert second.mailboxes.get("a@example.org") == Mailbox("a@example.org", Limits(200))
    assert second.mailboxes.get("b@example.org") == Mailbox("b@example.org")
    assert first.mailboxes.get("a@example.org") is looked_up and first.mailboxes.get("b@example.org") is None


def test_the_objects_kept_are_bounded() -> None:
    boxes = [Mailbox(f"u{n}@example.org", Limits(n)) for n in range(compact._MEMO + 10)]
    table = compact.updated(None, changes(*boxes, full=True))
    for box in boxes:
        assert table.mailboxes.get(box.address) == box
    assert len(table._mailbox_memo) <= 2 * compact._MEMO


def test_a_busy_mailbox_stays_kept_while_many_others_are_asked() -> None:
    """Scenario: a mailbox asked about now and then among more than the memo holds of others.
    Expected: its objects are made once. (The memo used to be emptied whole when full: every
    busy mailbox was made again, and with 10,000 mailboxes asked at random most look-ups were.)"""
    boxes = [Mailbox(f"u{n}@example.org", Limits(n)) for n in range(3 * compact._MEMO)]
    table = compact.updated(None, changes(*boxes, full=True))
    busy = table.mailboxes.get(boxes[0].address)
    for n, box in enumerate(boxes[1:]):
        assert table.mailboxes.get(box.address) == box
        if n % 1000 == 0:
            assert table.mailboxes.get(boxes[0].address) is busy
    assert table.mailboxes.get(boxes[0].address) is busy


def test_going_through_every_mailbox_leaves_the_busy_ones_kept() -> None:
    """Whole-table passes (the daemon's read-ahead, [watch]'s reload) make their objects anew:
    only the request path's look-ups (get) are kept."""
    boxes = [Mailbox(f"u{n}@example.org", Limits(n)) for n in range(100)]
    table = compact.updated(None, changes(*boxes, full=True))
    busy = table.mailboxes.get("u1@example.org")
    assert list(table.mailboxes.values()) == boxes
    assert list(table.readings.values()) == []
    assert table._mailbox_memo.new == {"u1@example.org": busy} and not table._mailbox_memo.old


_mailboxes = st.builds(
    Mailbox,
    st.sampled_from(ADDRESSES),
    # Few values, so that one write of a mailbox often repeats another's limits (only its path changed).
    st.builds(Limits, st.sampled_from([0, 100, 10**12]), st.sampled_from([0, 10])),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["/var/mail/a", "/home/b/Maildir", "/srv/ü"])),
)
_folders = st.lists(st.builds(FolderUsage, st.sampled_from(["INBOX", ".Sent"]), st.integers(0, 99), st.integers(0, 9)))
_readings = st.builds(
    lambda address, path, fmt, folders, error, size, messages, agrees, state, at: Reading(
        address,
        path,
        MailboxUsage(fmt, tuple(folders), None, error, MaildirsizeInfo(size if agrees else size + 1, messages, "")),
        size,
        messages,
        state,
        at,
    ),
    st.sampled_from(ADDRESSES),
    st.sampled_from(["", "/var/mail/a", "/home/b/Maildir"]),
    st.sampled_from(list(Format)),
    _folders,
    st.one_of(st.none(), st.sampled_from(["unreadable", "timed out"])),
    st.integers(0, 10**12),
    st.integers(0, 10**6),
    st.booleans(),
    st.sampled_from(list(State)),
    st.floats(0, 2e9),
)
_changes = st.builds(
    lambda mailboxes_full, mailboxes, removed_mailboxes, readings_full, readings, removed_readings: Changes(
        None, mailboxes_full, mailboxes, removed_mailboxes, readings_full, readings, removed_readings, None
    ),
    st.booleans(),
    st.lists(_mailboxes, max_size=6),
    st.lists(st.sampled_from(ADDRESSES), max_size=3),
    st.booleans(),
    st.lists(_readings, max_size=6),
    st.lists(st.sampled_from(ADDRESSES), max_size=3),
)


_Row = TypeVar("_Row", Mailbox, Reading)


def _applied(rows: dict[str, _Row], full: bool, written: list[_Row], removed: list[str]) -> dict[str, _Row]:
    """What a dict of the store's rows holds after these changes (later writes win)."""
    rows = {} if full else dict(rows)
    for address in removed:
        rows.pop(address, None)
    for row in written:
        rows[row.address] = row
    return rows


def _as_served(reading: Reading) -> tuple[object, ...]:
    """What the request path reads of a reading: the maildirsize only as whether it agreed."""
    u = reading.usage
    agreed = u.maildirsize is not None and u.maildirsize.agrees_with(reading.bytes, reading.messages)
    return (reading.path, reading.bytes, reading.messages, reading.state, reading.measured_at, u.format, u.folders,
            u.error, agreed)  # fmt: skip


def _holds(table: compact.Table, mailboxes: dict[str, Mailbox], readings: dict[str, Reading]) -> bool:
    served = {a: _as_served(r) for a, r in table.readings.items()}
    return dict(table.mailboxes) == mailboxes and served == {a: _as_served(r) for a, r in readings.items()}


@settings(max_examples=200, deadline=None)
@given(st.lists(_changes, min_size=1, max_size=8))
def test_every_version_holds_what_the_rows_hold_and_keeps_it_when_the_next_is_built(steps: list[Changes]) -> None:
    """Versions share chunks of four rows here: a write to one of them must go to a copy, a full
    load must blank what it does not name, and growing must keep the short last chunk's rows."""
    with mock.patch.object(compact, "_CHUNK_BITS", 2):
        versions: list[tuple[compact.Table, dict[str, Mailbox], dict[str, Reading]]] = []
        table: compact.Table | None = None
        mailboxes: dict[str, Mailbox] = {}
        readings: dict[str, Reading] = {}
        for changes in steps:
            table = compact.updated(table, changes)
            mailboxes = _applied(mailboxes, changes.mailboxes_full, changes.mailboxes, changes.removed_mailboxes)
            readings = _applied(readings, changes.readings_full, changes.readings, changes.removed_readings)
            versions.append((table, mailboxes, readings))
        for version, its_mailboxes, its_readings in versions:
            assert _holds(version, its_mailboxes, its_readings)


@settings(max_examples=200, deadline=None)
@given(st.lists(_changes, min_size=1, max_size=8))
def test_what_a_version_changed_in_the_mailboxes_is_what_differs_from_the_one_before(steps: list[Changes]) -> None:
    """A load of every mailbox (an admin's table) hands the live tracker only the mailboxes that
    differ from the last load: written (added, other limits, enabled or path) and removed."""
    with mock.patch.object(compact, "_CHUNK_BITS", 2):
        table = compact.updated(None, Changes(None, True, [], [], True, [], [], None))
        mailboxes: dict[str, Mailbox] = {}
        for changes in steps:
            before, table = table, compact.updated(table, changes)
            was, mailboxes = (
                mailboxes,
                _applied(mailboxes, changes.mailboxes_full, changes.mailboxes, changes.removed_mailboxes),
            )
            diff = compact.mailbox_changes(before, table)
            assert diff is not None  # a few rows never start a generation of their own
            written, removed = diff
            assert sorted(written, key=lambda m: m.address) == sorted(
                (m for a, m in mailboxes.items() if was.get(a) != m), key=lambda m: m.address
            )
            assert sorted(removed) == sorted(set(was) - set(mailboxes))


def test_a_new_generation_has_no_changes_to_tell() -> None:
    first = compact.updated(None, changes(Mailbox("a@example.org"), full=True))
    assert compact.mailbox_changes(first, compact.updated(None, changes(Mailbox("a@example.org"), full=True))) is None
