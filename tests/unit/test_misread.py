"""A scan whose results look like a misread layout: decided on readings alone, without I/O."""

from __future__ import annotations

from quotagate.misread import misread_warning
from quotagate.model import FolderUsage, Format, MailboxUsage, Reading, State


def reading(address: str, fmt: Format = Format.MAILDIR, messages: int = 3, error: str | None = None) -> Reading:
    folders = () if error else (FolderUsage("INBOX", 100 * messages, messages),)
    usage = MailboxUsage(fmt, folders, error=error)
    state = State.UNKNOWN if error else State.OK
    return Reading(address, f"/var/vmail/{address}", usage, 100 * messages, messages, state, 0.0)


def spool(n: int, fmt: Format = Format.MAILDIR, messages: int = 3) -> dict[str, Reading]:
    return {f"u{i}@x": reading(f"u{i}@x", fmt, messages) for i in range(n)}


def test_a_normal_scan_says_nothing() -> None:
    before = spool(10)
    after = {**before, "u0@x": reading("u0@x", messages=0), "u1@x": reading("u1@x", messages=9)}
    assert misread_warning(before, after) is None
    assert misread_warning({}, spool(10)) is None  # a first scan has nothing to compare with
    assert misread_warning({}, spool(10, messages=0)) is None


def test_most_mailboxes_measured_empty_after_holding_mail() -> None:
    warning = misread_warning(spool(5), spool(5, messages=0))
    assert warning is not None
    assert "5 of 5 mailboxes measured empty" in warning
    assert "[spool] format, layout and maildir_subdir" in warning
    assert "\n" not in warning


def test_empty_needs_more_than_half_of_at_least_four_known_mailboxes() -> None:
    half = {**spool(4), **{f"u{i}@x": reading(f"u{i}@x", messages=0) for i in range(2)}}
    assert misread_warning(spool(4), half) is None
    three = {**spool(4), **{f"u{i}@x": reading(f"u{i}@x", messages=0) for i in range(3)}}
    assert "3 of 4 mailboxes" in (misread_warning(spool(4), three) or "")
    assert misread_warning(spool(3), spool(3, messages=0)) is None  # too few to tell a pattern


def test_empty_counts_only_mailboxes_that_had_mail() -> None:
    before = {**spool(2), **spool(6, messages=0)}
    after = spool(8, messages=0)  # two emptied, six were empty already: not most
    assert misread_warning(before, after) is None


def test_unknown_mailboxes_are_not_counted_as_empty() -> None:
    before = spool(6)
    after = {a: reading(a, error="Permission denied") for a in before}
    assert misread_warning(before, after) is None


def test_every_mailbox_changing_format_warns() -> None:
    warning = misread_warning(spool(3), spool(3, Format.MBOX))
    assert warning is not None
    assert "3 of 3 mailboxes changed format since the last scan (maildir -> mbox)" in warning


def test_format_change_needs_every_measured_mailbox_and_two_of_them() -> None:
    assert misread_warning(spool(1), spool(1, Format.MBOX)) is None  # one user's migration
    mixed = {**spool(4, Format.MBOX), "u0@x": reading("u0@x")}
    assert misread_warning(spool(4), mixed) is None
    missing = {**spool(4, Format.MBOX), "u0@x": reading("u0@x", Format.MISSING, messages=0)}
    assert "3 of 3 mailboxes changed format" in (misread_warning(spool(4), missing) or "")


def test_both_in_one_line() -> None:
    warning = misread_warning(spool(5), spool(5, Format.MBOX, messages=0))
    assert warning is not None
    assert "5 of 5 mailboxes measured empty" in warning and "5 of 5 mailboxes changed format" in warning
    assert "\n" not in warning


def test_a_first_scan_that_finds_most_mailboxes_missing_warns() -> None:
    first = {**spool(2), **{f"m{i}@x": reading(f"m{i}@x", Format.MISSING, messages=0) for i in range(3)}}
    warning = misread_warning({}, first)
    assert warning is not None and "3 of 5 mailboxes not found on disk at a first scan" in warning
    assert misread_warning({}, {**spool(3), "m@x": reading("m@x", Format.MISSING, messages=0)}) is None
    assert "first scan" not in (misread_warning(spool(5), first) or "")  # only with nothing before
