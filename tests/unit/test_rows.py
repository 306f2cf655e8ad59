"""A stored reading's row decodes to the folders a load asks for: all, none, or those a predicate
on the name accepts, as name and totals (the daemon keeps only the folders a limit applies to)."""

from __future__ import annotations

from quotagate.model import FolderUsage, Format, MailboxUsage, Reading, State
from quotagate.store import rows

FOLDERS = (
    FolderUsage("INBOX", 500, 5, (1, 2, 3)),
    FolderUsage("Trash", 70, 2, (4, 5, 6), (70, 2)),
    FolderUsage("Sent", 30, 1, (7, 8, 9)),
)
READING = Reading("a@example.org", "/var/mail/a", MailboxUsage(Format.MAILDIR, FOLDERS, 1), 600, 8, State.OK, 1.0)


def stored() -> tuple[object, ...]:
    row = rows.usage_row(READING)
    return tuple(row[column] for column in rows.USAGE_COLUMNS)


def test_every_folder_or_none() -> None:
    assert rows.reading(stored()).usage.folders == FOLDERS
    assert rows.reading(stored(), with_folders=False).usage.folders == ()


def test_the_folders_a_predicate_accepts_as_their_totals_one_string_per_name() -> None:
    first, second = (rows.reading(stored(), with_folders=lambda name: name == "Trash") for _ in range(2))
    assert first.usage.folders == (FolderUsage("Trash", 70, 2),)
    assert (first.bytes, first.messages) == (600, 8)  # the mailbox's totals stay its own
    assert first.usage.folders[0].name is second.usage.folders[0].name  # decoded twice, kept once
