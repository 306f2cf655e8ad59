"""Measuring generated spools, compared with an independent walk of the same files."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.accounting import PROFILES, Profile
from quotagate.model import FolderUsage, Format, MailboxUsage
from quotagate.usage import mailbox, maildir
from quotagate.usage.mailbox import FormatSetting
from quotagate.usage.safefs import Roots
from tests.integration.conftest import as_nobody, make_unreadable
from tests.present import present
from tests.spoolgen import (
    add_message,
    backdate,
    independent_maildir_count,
    maildir_folder,
    python_mbox_count,
    totals,
    write_mbox,
)
from tests.usagefs import dir_fd, folder_stamp

FAR_FUTURE = 2**62  # a racy cutoff no mtime reaches: every stamp is kept
# Every spool of these tests lives in a temp dir; the tests of confinement pass their own roots.
TEMP = Roots.of(tempfile.gettempdir())


def measure(
    root: str, fmt: FormatSetting, previous: MailboxUsage | None = None, racy_cutoff_ns: int = 0
) -> MailboxUsage:
    """The usage of the mailbox at ``root``, ``previous`` measured there (no Maildir subdirectory)."""
    reuse = None if previous is None else mailbox.Found(root, previous)
    return mailbox.measure(root, fmt, reuse, racy_cutoff_ns, TEMP, None, "").usage


def unchanged(root: str, previous: MailboxUsage) -> bool:
    return mailbox.unchanged(root, previous, TEMP)


def read_folder(path: str | bytes | Path) -> FolderUsage:
    with dir_fd(path) as fd:
        return maildir.read_folder(fd, "INBOX", FAR_FUTURE)[0]


def per_folder(usage: MailboxUsage) -> dict[str, tuple[int, int]]:
    return {f.name: (f.bytes, f.messages) for f in usage.folders}


def assert_matches_walk(usage: MailboxUsage, root: str | bytes | Path) -> None:
    assert usage.known, usage.error
    expected = independent_maildir_count(root)
    assert per_folder(usage) == expected
    assert (usage.all_bytes, usage.all_messages) == totals(expected)


# -- Maildir and Maildir++ -------------------------------------------------------------------


def test_maildir_with_and_without_size_in_names(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    for size in (120, 3000, 45):
        add_message(inbox, size, with_size=True)
    for size in (77, 9000):
        add_message(inbox, size, with_size=False, where="new")
    add_message(inbox, 500, with_size=False)
    usage = measure(str(root), "maildir")
    assert usage.format is Format.MAILDIR
    assert per_folder(usage) == {"INBOX": (120 + 3000 + 45 + 77 + 9000 + 500, 6)}
    assert_matches_walk(usage, root)


def test_size_in_the_name_is_trusted_over_the_file(tmp_path: Path) -> None:
    # The README: the size comes from ",S=" in the name; only names without one cost a stat.
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 100, name_size=10)
    add_message(inbox, 100, with_size=False)
    usage = measure(str(root), "auto")
    assert per_folder(usage) == {"INBOX": (110, 2)}


def test_nested_maildirpp_folders(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 1000)
    add_message(maildir_folder(root, "Sent"), 200, where="new")
    add_message(maildir_folder(root, "Sent"), 201, with_size=False)
    add_message(maildir_folder(root, "Archive"), 300)
    add_message(maildir_folder(root, "Archive.2024"), 400)
    add_message(maildir_folder(root, "Archive.2024"), 401, with_size=False, where="new")
    add_message(maildir_folder(root, "My Old Mail"), 500)
    add_message(maildir_folder(root, "Entw&APw-rfe"), 600)
    add_message(maildir_folder(root, b"Entw\xfcrfe"), 700, with_size=False)
    add_message(maildir_folder(root, b"caf\xc3\xa9 \xff"), 800)
    maildir_folder(root, "Empty")

    usage = measure(str(root), "auto")
    assert per_folder(usage) == {
        "INBOX": (1000, 1),
        "Sent": (401, 2),
        "Archive": (300, 1),
        "Archive.2024": (801, 2),
        "My Old Mail": (500, 1),
        "Entw&APw-rfe": (600, 1),
        "Entw\\xfcrfe": (700, 1),
        "café \\xff": (800, 1),
        "Empty": (0, 0),
    }
    assert_matches_walk(usage, root)


def test_bytes_root_path_with_undecodable_name(tmp_path: Path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"M\xe4ildir")
    add_message(maildir_folder(root), 123)
    add_message(maildir_folder(root, b"\xff"), 7)
    usage = measure(os.fsdecode(root), "auto")
    assert per_folder(usage) == {"INBOX": (123, 1), "\\xff": (7, 1)}


def test_tmp_dot_files_and_metadata_are_not_mail(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    sent = maildir_folder(root, "Sent")
    add_message(inbox, 100)
    add_message(sent, 50, where="new")
    # Deliveries in progress, dot files and server metadata: none of it counts.
    for folder in (root, Path(os.fsdecode(sent))):
        (folder / "tmp" / "1700000000.M9P9.host,S=99999").write_bytes(b"x" * 99999)
        (folder / "tmp" / "1700000000.M9P8.host").write_bytes(b"x" * 5000)
        (folder / "cur" / ".hidden,S=4000:2,S").write_bytes(b"x" * 4000)
        (folder / "new" / ".nfs000123").write_bytes(b"x" * 3000)
        (folder / "dovecot-uidlist").write_bytes(b"3 V1 N2\n" * 500)
        (folder / "dovecot-keywords").write_bytes(b"0 $Junk\n")
        (folder / "dovecot.index").write_bytes(b"i" * 8000)
        (folder / "dovecot.index.log").write_bytes(b"l" * 8000)
        (folder / "dovecot.index.cache").write_bytes(b"c" * 8000)
        (folder / "courierimapuiddb").write_bytes(b"u" * 100)
        (folder / "maildirfolder").write_bytes(b"")
    (root / "subscriptions").write_bytes(b"Sent\n")
    (root / ".subscriptions").write_bytes(b"Sent\n")
    (root / "dovecot-uidvalidity").write_bytes(b"65a1b2c3")
    (root / "dovecot.list.index.log").write_bytes(b"x" * 5000)
    (root / "cur" / "a-directory,S=123").mkdir()  # not a file, even with a size in its name
    (root / "new" / "plain-directory").mkdir()

    usage = measure(str(root), "auto")
    assert per_folder(usage) == {"INBOX": (100, 1), "Sent": (50, 1)}
    assert_matches_walk(usage, root)


def test_a_message_in_new_and_cur_under_one_unique_name_counts_once(tmp_path: Path) -> None:
    # A crash between link and unlink can leave the same message in both: counted once.
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    moved = add_message(inbox, 100, where="new", unique="1700000000.M1P1.h,S=100")
    os.link(moved, os.path.join(inbox, b"cur", b"1700000000.M1P1.h,S=100:2,S"))
    add_message(inbox, 5, where="cur")
    assert per_folder(measure(str(root), "auto")) == {"INBOX": (105, 2)}


@pytest.mark.parametrize("profile", ["files", "dovecot", "courier", "exim"])
def test_a_stub_in_new_hides_no_message_in_cur_of_the_same_unique_name(tmp_path: Path, profile: str) -> None:
    """Scenario: a user puts a 5 MB message in cur/ (``1700000000.M1P1.host:2,S``) and a 1-byte
    file of the same unique name in new/; nothing moves. Expected: two files, both counted, as
    every delivery agent counts them. (Before, cur/ names whose unique part new/ held were
    always skipped, meant for mail moving during the read: the 5 MB were not counted, and a user
    could keep any amount of mail out of their quota, one stub a message.)"""
    inbox = maildir_folder(tmp_path / "Maildir")
    add_message(inbox, 5_000_000, where="cur", unique="1700000000.M1P1.host")
    add_message(inbox, 1, where="new", unique="1700000000.M1P1.host")
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        usage, _ = maildir.read_folder(fd, "INBOX", 0, PROFILES[profile])
    finally:
        os.close(fd)
    assert (usage.bytes, usage.messages) == (5_000_001, 2)


@pytest.mark.parametrize("others", [0, 100])
@pytest.mark.parametrize("new_flags", [None, "2,"])  # new/ names rarely carry the ":2," info, but may
def test_many_messages_in_new_and_one_also_in_cur_count_once(
    tmp_path: Path, others: int, new_flags: str | None
) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    for _ in range(others):
        add_message(inbox, 10, where="new", with_size=False)
    both = "1700000000.M1P1.h,S=100"
    moved = add_message(inbox, 100, where="new", unique=both + (f":{new_flags}" if new_flags else ""))
    os.link(moved, os.path.join(inbox, b"cur", os.fsencode(both) + b":2,S"))  # linked, not yet unlinked
    add_message(inbox, 5, where="cur")
    with open(os.path.join(inbox, b"new", b".hidden,S=7"), "wb") as dot:
        dot.write(b"x")
    assert per_folder(measure(str(root), "auto")) == {"INBOX": (105 + 10 * others, 2 + others)}


@pytest.mark.parametrize(
    "unique",
    [
        b"1700000000.M1P1.h,S=abc",
        b"1700000000.M1P1.h,S=",
        b"1700000000.M1P1.h,S=" + b"9" * 25,
        "1700000000.M1P1.h,S=\u00b2".encode(),
        b"1700000000.M1P1.h,S=12\xff",
        b"1700000000.M1P1.h\xff\xfe",
        b"\xff\xfe\xfd",
    ],
)
def test_bad_names_are_measured_by_stat(tmp_path: Path, unique: bytes) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 4321, unique=unique)
    add_message(inbox, 10, unique=b"good,S=10", where="new")
    walk = independent_maildir_count(root)
    assert walk == {"INBOX": (4331, 2)}
    assert per_folder(measure(str(root), "auto")) == walk


def test_undecodable_bytes_outside_the_size_keep_the_size(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 4321, unique=b"1700000000.M1P1.h\xff\xfe,S=12")
    assert per_folder(measure(str(root), "auto")) == {"INBOX": (12, 1)}


# -- maildirsize -----------------------------------------------------------------------------


def _with_maildirsize(root: Path, bytes_: int, messages: int) -> None:
    (root / "maildirsize").write_text(f"1000000S,100C\n{bytes_} {messages}\n")


def test_fresh_maildirsize_agrees(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 300)
    add_message(maildir_folder(root, "Sent"), 200, with_size=False)
    (root / "maildirsize").write_text("1000000S,100C\n300 1\n200 1\n")
    usage = measure(str(root), "auto")
    assert usage.maildirsize is not None
    assert (usage.maildirsize.bytes, usage.maildirsize.messages, usage.maildirsize.definition) == (
        500,
        2,
        "1000000S,100C",
    )
    assert usage.maildirsize.agrees_with(usage.all_bytes, usage.all_messages)


def test_stale_maildirsize_disagrees(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 300)
    _with_maildirsize(root, 100, 9)
    usage = measure(str(root), "auto")
    assert usage.maildirsize is not None
    assert (usage.maildirsize.bytes, usage.maildirsize.messages, usage.maildirsize.definition) == (
        100,
        9,
        "1000000S,100C",
    )
    assert not usage.maildirsize.agrees_with(usage.all_bytes, usage.all_messages)
    assert (usage.all_bytes, usage.all_messages) == (300, 1)  # the files win


def test_malformed_maildirsize_gives_no_info(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 300)
    (root / "maildirsize").write_text("1000S\nnot numbers\n")
    usage = measure(str(root), "auto")
    assert usage.known
    assert usage.maildirsize is None
    assert usage.all_bytes == 300


def test_maildirsize_alone_marks_a_maildir(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    root.mkdir()
    _with_maildirsize(root, 0, 0)
    usage = measure(str(root), "auto")
    assert usage.format is Format.MAILDIR
    assert per_folder(usage) == {"INBOX": (0, 0)}


def test_maildir_folders_without_the_inbox_directories_still_mark_a_maildir(tmp_path: Path) -> None:
    """imapsync or doveadm may make the folders only: read as an mbox home, all of it counted 0."""
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root, "Sent"), 100)
    add_message(maildir_folder(root, "Archive"), 200, where="new")
    assert not (root / "cur").exists()
    usage = measure(str(root), "auto")
    assert usage.format is Format.MAILDIR
    assert per_folder(usage) == {"INBOX": (0, 0), "Sent": (100, 1), "Archive": (200, 1)}


def test_an_mbox_home_with_dot_directories_stays_an_mbox_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".imap" / "INBOX").mkdir(parents=True)  # Dovecot's index directory, no cur/ or new/
    (home / ".cur").mkdir()
    os.symlink(tmp_path / "elsewhere", home / ".Linked")  # a symlinked folder is never a marker
    (tmp_path / "elsewhere" / "cur").mkdir(parents=True)
    write_mbox(home / "inbox", ["one"])
    assert measure(str(home), "auto").format is Format.MBOX


def test_sizes_in_names_are_ascii_digits_only(tmp_path: Path) -> None:
    """Arabic-Indic digits would read as 123456 on the fast path and the file's 10 bytes on the
    other: one spool, two answers. Neither path takes them."""
    root = tmp_path / "Maildir"
    maildir_folder(root)
    (root / "cur" / "1.M1.h,S=\u0661\u0662\u0663\u0664\u0665\u0666:2,S").write_bytes(b"x" * 10)
    fast = per_folder(measure(str(root), "maildir"))
    (root / "cur" / ".hidden").write_bytes(b"")  # a dot file sends the folder down the per-name path
    assert fast == per_folder(measure(str(root), "maildir")) == {"INBOX": (10, 1)}


def test_forged_sizes_past_63_bits_count_as_full_not_unknown(tmp_path: Path) -> None:
    """Unknown would take the mailbox out of the check: its owner could open a full mailbox."""
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    add_message(maildir_folder(root, "Other"), 10)
    for _ in range(10):  # each value fits in 63 bits, their sum does not
        add_message(inbox, 10, name_size=999_999_999_999_999_999)
    usage = measure(str(root), "maildir")
    assert usage.known
    assert 2**62 < usage.all_bytes <= 2**63 - 1
    assert usage.all_messages == 11


# -- mbox --------------------------------------------------------------------------------------


def test_mbox_file_mailbox(tmp_path: Path) -> None:
    path = tmp_path / "user"
    write_mbox(path, ["one\n", "From inside the body\n", "three\n\nFrom again\n"])
    for fmt in ("auto", "mbox"):
        usage = measure(str(path), fmt)
        assert usage.known
        assert usage.format is Format.MBOX
        assert per_folder(usage) == {"INBOX": (path.stat().st_size, python_mbox_count(path))}
        assert usage.all_messages == 3


def test_mbox_file_is_not_a_maildir(tmp_path: Path) -> None:
    path = tmp_path / "user"
    write_mbox(path, ["one\n"])
    usage = measure(str(path), "maildir")
    assert not usage.known
    assert "not a Maildir" in (usage.error or "")


def test_mbox_directory_mailbox(tmp_path: Path) -> None:
    root = tmp_path / "user"
    write_mbox(root / "mbox", ["a\n", "b\n"])
    write_mbox(root / "mail" / "Sent", ["c\n", "From d\n", "e\n"], crlf=True)
    write_mbox(root / "mail" / "Lists" / "python", ["f\n"])
    (root / "mbox.lock").write_bytes(b"123")
    (root / "mail" / ".subscriptions").write_text("Sent\n")
    (root / ".imap").mkdir()
    (root / ".imap" / "dovecot.index").write_bytes(b"i" * 1000)
    (root / "mail" / "link").symlink_to(root / "mbox")

    usage = measure(str(root), "auto")
    assert usage.known
    assert usage.format is Format.MBOX
    expected = {
        name: ((root / name).stat().st_size, python_mbox_count(root / name))
        for name in ("mbox", "mail/Sent", "mail/Lists/python")
    }
    assert per_folder(usage) == expected
    assert usage.all_messages == 6
    assert measure(str(root), "mbox") == usage


def _mbox_sizes(root: Path, *names: str) -> dict[str, tuple[int, int]]:
    return {name: ((root / name).stat().st_size, python_mbox_count(root / name)) for name in names}


def test_sieve_scripts_forward_and_index_files_in_an_mbox_home_are_not_mail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "user"
    write_mbox(root / "mbox", ["a\n", "b\n"])
    write_mbox(root / "mail" / "Sent", ["c\n"])
    (root / "mail" / "Drafts").write_bytes(b"")  # an mbox with nothing in it yet
    (root / "sieve").mkdir()
    (root / "sieve" / "managesieve.sieve").write_text('require ["fileinto"];\nfileinto "Junk";\n' * 40)
    (root / "sieve" / "vacation.sieve").write_text('require "vacation";\nvacation "away";\n')
    (root / ".dovecot.sieve").symlink_to("sieve/managesieve.sieve")
    (root / ".forward").write_text('"|/usr/bin/procmail"\n')
    (root / "dovecot.sieve.log").write_text("sieve: line 1: error\n" * 30)
    (root / "mail" / ".imap" / "INBOX").mkdir(parents=True)
    (root / "mail" / ".imap" / "INBOX" / "dovecot.index").write_bytes(b"\x07\x02" + b"i" * 4000)
    (root / "mail" / ".subscriptions").write_text("Sent\n")
    (root / "mail" / "subscriptions").write_text("V\t2\n\nSent\n")
    (root / "mail" / "dovecot.list.index.log").write_bytes(b"\x01\x03" + b"l" * 5000)
    (root / "mail" / "dovecot-uidlist").write_text("3 V1700000000 N3\n")

    with caplog.at_level(logging.INFO, logger="quotagate.usage"):
        usage = measure(str(root), "auto")
    assert usage.known, usage.error
    assert per_folder(usage) == {**_mbox_sizes(root, "mbox", "mail/Sent"), "mail/Drafts": (0, 0)}
    assert usage.all_messages == 3
    logged = caplog.text
    for name in ("sieve/managesieve.sieve", "dovecot.sieve.log", "mail/dovecot-uidlist"):
        assert name in logged
    assert measure(str(root), "mbox") == usage
    # A reading from before files were looked at counted the script: it is not reused.
    script = (root / "sieve" / "managesieve.sieve").stat()
    counted = FolderUsage("sieve/managesieve.sieve", script.st_size, 0, (script.st_mtime_ns, script.st_size))
    older = MailboxUsage(Format.MBOX, (*usage.folders, counted))
    assert per_folder(measure(str(root), "auto", older, FAR_FUTURE)) == per_folder(usage)


def test_a_directory_of_message_files_is_not_mbox_folders(tmp_path: Path) -> None:
    root = tmp_path / "user"
    write_mbox(root / "mbox", ["a\n"])
    archive = maildir_folder(root / "mail" / "Archive")  # a Maildir left in an mbox home
    add_message(archive, 500)
    add_message(archive, 600, where="new", with_size=False)
    mh = root / "Mail" / "inbox"  # an MH folder: numbered message files
    mh.mkdir(parents=True)
    for n in (1, 2, 3):
        (mh / str(n)).write_text(f"Return-Path: <a@b.example>\nSubject: {n}\n\nhello\n")
    (mh / ".mh_sequences").write_text("unseen: 2-3\n")

    usage = measure(str(root), "auto")
    assert usage.known, usage.error
    assert per_folder(usage) == _mbox_sizes(root, "mbox")
    # A mailbox path that is itself a directory of messages (MH) holds mail quotagate cannot
    # count: unknown, not an empty mailbox.
    alone = measure(str(mh), "auto")
    assert not alone.known and "no mbox file, only what quotagate cannot count (1, 2, 3)" in (alone.error or "")
    # A message saved with its envelope line starts as an mbox does, as do IMAP folders the
    # owner names cur/2024.q1 (their mail counted by the agent): which, quotagate cannot tell.
    (Path(os.fsdecode(archive)) / "cur" / "1700000001.M1P1.h:2,S").write_bytes(b"From a@b.example Mon Jan  1\n\nx\n")
    usage = measure(str(root), "auto")
    assert not usage.known and "IMAP folders named cur or new" in (usage.error or "")


@pytest.mark.parametrize("fmt", ["auto", "mbox"])
def test_a_mailbox_file_that_is_not_an_mbox_is_unknown(tmp_path: Path, fmt: FormatSetting) -> None:
    path = tmp_path / "user"
    path.write_text("Return-Path: <a@b.example>\nSubject: one message\n\nhello\n")
    usage = measure(str(path), fmt)
    assert not usage.known
    assert usage.error == f"{path}: not an mbox file (neither empty nor starting with a From line)"
    assert usage.folders == ()


def test_mbox_directory_forced_as_maildir_is_empty_maildir(tmp_path: Path) -> None:
    root = tmp_path / "user"
    write_mbox(root / "mbox", ["a\n"])
    usage = measure(str(root), "maildir")
    assert usage.format is Format.MAILDIR
    assert usage.all_messages == 0


def test_mailbox_root_may_be_a_symlink_to_an_mbox_file(tmp_path: Path) -> None:
    real = tmp_path / "real-mbox"
    write_mbox(real, ["a\n", "b\n"])
    link = tmp_path / "user"
    link.symlink_to(real)
    usage = measure(str(link), "auto")
    assert usage.known, usage.error
    assert per_folder(usage) == {"INBOX": (real.stat().st_size, 2)}


def test_mailbox_root_may_be_a_symlink_to_a_maildir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    add_message(maildir_folder(real), 42)
    add_message(maildir_folder(real, "Sent"), 8)
    link = tmp_path / "Maildir"
    link.symlink_to(real)
    usage = measure(str(link), "auto")
    assert per_folder(usage) == {"INBOX": (42, 1), "Sent": (8, 1)}


# -- empty, missing, broken --------------------------------------------------------------------


def test_empty_maildir(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    maildir_folder(root)
    usage = measure(str(root), "auto")
    assert usage.known
    assert usage.format is Format.MAILDIR
    assert per_folder(usage) == {"INBOX": (0, 0)}


def test_empty_directory_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"")
    for name in ("dir", "file"):
        usage = measure(str(tmp_path / name), "auto")
        assert usage.known
        assert (usage.all_bytes, usage.all_messages) == (0, 0)


@pytest.mark.parametrize("fmt", ["auto", "maildir", "mbox"])
def test_missing_mailbox_is_empty_not_unknown(tmp_path: Path, fmt: str) -> None:
    usage = measure(str(tmp_path / "nobody-yet" / "Maildir"), fmt)  # type: ignore[arg-type]
    assert usage.known
    assert usage.format is Format.MISSING
    assert (usage.all_bytes, usage.all_messages) == (0, 0)


def test_dangling_symlink_root_is_missing(tmp_path: Path) -> None:
    (tmp_path / "Maildir").symlink_to(tmp_path / "gone")
    usage = measure(str(tmp_path / "Maildir"), "auto")
    assert usage.known
    assert usage.format is Format.MISSING


def test_root_that_is_a_fifo_is_unknown(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "Maildir")
    usage = measure(str(tmp_path / "Maildir"), "auto")
    assert not usage.known
    assert "neither a file nor a directory" in (usage.error or "")


# -- symlinks ----------------------------------------------------------------------------------


def test_symlinked_folders_and_files_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    sent = maildir_folder(root, "Sent")
    add_message(inbox, 100)
    real = add_message(sent, 50)
    elsewhere = tmp_path / "elsewhere"
    add_message(maildir_folder(elsewhere), 7777)
    (root / ".Loop").symlink_to(root / ".Loop")  # a folder symlinked to itself
    (root / ".Alias").symlink_to(root / ".Sent")  # the same folder twice
    (root / ".Outside").symlink_to(elsewhere)
    # Message-like symlinks in cur/ and new/, with and without sizes in their names.
    os.symlink(real, os.path.join(inbox, b"cur", b"1700000000.M77P1.h,S=50:2,S"))
    os.symlink(real, os.path.join(inbox, b"cur", b"1700000000.M78P1.h:2,S"))
    os.symlink(b"nowhere", os.path.join(inbox, b"new", b"1700000000.M79P1.h"))
    os.symlink(b"self", os.path.join(inbox, b"new", b"self"))

    usage = measure(str(root), "auto")
    assert per_folder(usage) == {"INBOX": (100, 1), "Sent": (50, 1)}
    assert_matches_walk(usage, root)


@pytest.mark.parametrize("target", ["self", "other"])
def test_maildir_root_that_is_a_symlink_loop_is_unknown(tmp_path: Path, target: str) -> None:
    root = tmp_path / "Maildir"
    if target == "self":
        root.symlink_to(root)
    else:
        (tmp_path / "other").symlink_to(root)
        root.symlink_to(tmp_path / "other")
    usage = measure(str(root), "auto")
    assert not usage.known
    assert usage.error is not None
    assert "symbolic links" in usage.error
    assert str(root) in usage.error


@pytest.mark.parametrize(
    ("folder", "sub", "target"),
    [
        ("INBOX", "cur", "other-user"),
        ("Junk", "new", "other-user"),
        ("Junk", "cur", "loop"),
    ],
)
def test_symlinked_cur_or_new_is_not_followed(tmp_path: Path, folder: str, sub: str, target: str) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 10, where="new" if sub == "cur" else "cur")
    junk = maildir_folder(root, folder)
    other = tmp_path / "other-user" / "Maildir"
    add_message(maildir_folder(other), 5000, where=sub)
    link = os.path.join(junk, sub.encode())
    shutil.rmtree(link)
    os.symlink(link if target == "loop" else os.path.join(os.fsencode(other), sub.encode()), link)
    usage = measure(str(root), "auto")
    assert usage.known, usage.error
    assert (usage.all_bytes, usage.all_messages) == (10, 1)


# -- unreadable -------------------------------------------------------------------------------


def _unreadable_spool(base: Path, open_up: Callable[[Path], None]) -> Path:
    root = base / "example.org" / "user" / "Maildir"
    for _ in range(3):
        add_message(maildir_folder(root), 100_000)
    add_message(maildir_folder(root, "Sent"), 10)
    add_message(maildir_folder(root, "Private"), 20)
    open_up(base)
    return root


def test_readable_spool_measures_the_same_without_privileges(open_dir: Path, open_up: Callable[[Path], None]) -> None:
    root = _unreadable_spool(open_dir, open_up)
    usage = as_nobody(lambda: measure(str(root), "auto"))
    assert usage.known, usage.error
    assert per_folder(usage) == independent_maildir_count(root)


@pytest.mark.parametrize("what", [".Private/cur", ".Private/new", ".Private", "cur", "new"])
def test_unreadable_folder_makes_the_mailbox_unknown(
    open_dir: Path, open_up: Callable[[Path], None], what: str
) -> None:
    root = _unreadable_spool(open_dir, open_up)
    make_unreadable(root / what)
    usage = as_nobody(lambda: measure(str(root), "auto"))
    assert not usage.known
    assert "Permission denied" in (usage.error or "")
    assert usage.folders == ()  # no partial totals that could look like a (low or high) usage


def test_unreadable_root_is_unknown(open_dir: Path, open_up: Callable[[Path], None]) -> None:
    root = _unreadable_spool(open_dir, open_up)
    make_unreadable(root)
    usage = as_nobody(lambda: measure(str(root), "auto"))
    assert not usage.known
    assert "Permission denied" in (usage.error or "")


def test_untraversable_parent_is_unknown_not_missing(open_dir: Path, open_up: Callable[[Path], None]) -> None:
    root = _unreadable_spool(open_dir, open_up)
    make_unreadable(root.parent)
    usage = as_nobody(lambda: measure(str(root), "auto"))
    assert not usage.known
    assert usage.format is Format.MISSING


def test_unreadable_mbox_in_a_directory_is_unknown(open_dir: Path, open_up: Callable[[Path], None]) -> None:
    root = open_dir / "user"
    write_mbox(root / "mbox", ["a\n"])
    write_mbox(root / "mail" / "Private", ["b\n"])
    open_up(open_dir)
    assert as_nobody(lambda: measure(str(root), "auto")).all_messages == 2
    make_unreadable(root / "mail" / "Private")
    usage = as_nobody(lambda: measure(str(root), "auto"))
    assert not usage.known
    assert "Private" in (usage.error or "")


# -- random spools -----------------------------------------------------------------------------

_message = st.tuples(
    st.integers(min_value=1, max_value=3000),  # size
    st.sampled_from(["cur", "new"]),
    st.booleans(),  # S= in the name
)
_folder_name = st.sampled_from(
    ["Sent", "Trash", "Archive.2024", "Archive.2024.Q1", "My Folder", "Entw&APw-rfe", "Drafts", b"\xfc\xff"]
)


@settings(max_examples=30, deadline=None)
@given(
    inbox=st.lists(_message, max_size=12),
    folders=st.dictionaries(_folder_name, st.lists(_message, max_size=8), max_size=5),
    junk=st.lists(st.sampled_from(["tmp", "dot", "symlink", "dir"]), max_size=4),
)
def test_random_maildirs_match_the_walk(
    inbox: list[tuple[int, str, bool]],
    folders: dict[str | bytes, list[tuple[int, str, bool]]],
    junk: list[str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "Maildir")
        layout: dict[str | bytes, list[tuple[int, str, bool]]] = {"INBOX": inbox, **folders}
        for name, messages in layout.items():
            folder = maildir_folder(root, name)
            for size, where, with_size in messages:
                add_message(folder, size, where=where, with_size=with_size)
            for i, kind in enumerate(junk):
                if kind == "tmp":
                    add_message(folder, 999, where="tmp")
                elif kind == "dot":
                    add_message(folder, 999, unique=f".dot{i},S=999")
                elif kind == "symlink":
                    os.symlink(b"/etc/hostname", os.path.join(folder, b"new", b"link%d,S=5" % i))
                else:
                    os.mkdir(os.path.join(folder, b"cur", b"dir%d:2," % i))
        usage = measure(root, "auto")
        assert_matches_walk(usage, root)
        assert usage.all_messages == sum(len(m) for m in layout.values())
        assert usage.all_bytes == sum(size for m in layout.values() for size, _, _ in m)


@settings(max_examples=30, deadline=None)
@given(
    files=st.dictionaries(
        st.sampled_from(["mbox", "Sent", "mail/Sent", "mail/Lists/python", "Drafts"]),
        st.lists(st.sampled_from(["hi", "From me", "x\n\nFrom y", ""]), max_size=6),
        min_size=1,
        max_size=4,
    ),
)
def test_random_mbox_directories_match_python(files: dict[str, list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "user"
        root.mkdir()
        for name, bodies in files.items():
            write_mbox(root / name, bodies)
        usage = measure(str(root), "auto")
        assert usage.known
        assert per_folder(usage) == {
            name: ((root / name).stat().st_size, python_mbox_count(root / name)) for name in files
        }


# -- reading again what changed -----------------------------------------------------------------


def test_unchanged_folders_are_reused_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, "Sent"), 200)
    add_message(maildir_folder(root, "Archive.2024"), 300)
    backdate(root)
    first = measure(str(root), "auto", None, time.time_ns())
    assert all(f.stamp is not None for f in first.folders)
    assert unchanged(str(root), first)

    read: list[str] = []
    original = maildir.read_folder

    def counting(fd: int, name: str, cutoff: int, *profile: Any, **before: Any) -> Any:
        read.append(name)
        return original(fd, name, cutoff, *profile, **before)

    monkeypatch.setattr(maildir, "read_folder", counting)
    again = measure(str(root), "auto", first, time.time_ns())
    assert read == []
    assert again == first

    add_message(maildir_folder(root, "Sent"), 5, where="new")
    assert not unchanged(str(root), first)
    third = measure(str(root), "auto", first, time.time_ns() - 2 * 10**9)
    assert read == ["Sent"]
    assert per_folder(third) == {"INBOX": (100, 1), "Sent": (205, 2), "Archive.2024": (300, 1)}
    assert present(third.folder("Sent")).stamp is None  # changed just now: racy, read again next time


def test_a_folder_swapped_for_a_symlink_while_it_is_looked_at_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its owner swaps .Sent for a symlink to the folder moved aside (whose stamps are the ones
    # stored) after the root was looked at: the folder is opened without following it.
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, "Sent"), 200)
    backdate(root)
    first = measure(str(root), "auto", None, time.time_ns())
    assert unchanged(str(root), first)
    original = maildir.folder_stamp

    def swapping(root_fd: int, name: str, layout: maildir.Layout = "maildir++") -> maildir.Stamp | None:
        if name == "Sent" and not (root / ".Sent-moved").exists():
            (root / ".Sent").rename(root / ".Sent-moved")
            (root / ".Sent").symlink_to(".Sent-moved")
        return original(root_fd, name, layout)

    monkeypatch.setattr(maildir, "folder_stamp", swapping)
    assert not unchanged(str(root), first)


def test_mail_in_a_non_utf8_folder_that_had_no_cur_is_seen(tmp_path: Path) -> None:
    # The reading names the folder by its display name; looked up by that name it is not there,
    # which must never pass for the empty folder it was.
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100)
    os.mkdir(os.path.join(os.fsencode(root), b".\xff"))
    backdate(root)
    first = measure(str(root), "auto", None, time.time_ns())
    assert per_folder(first) == {"INBOX": (100, 1), "\\xff": (0, 0)}
    add_message(maildir_folder(root, b"\xff"), 900)
    assert not unchanged(str(root), first)
    assert per_folder(measure(str(root), "auto", first, time.time_ns()))["\\xff"] == (900, 1)


def test_non_utf8_folder_survives_an_incremental_measure(tmp_path: Path) -> None:
    # Regression: folder names reused from the previous reading are display names, and a
    # non-UTF-8 folder looked up by its display name was measured as empty.
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, b"Entw\xfcrfe"), 700)
    backdate(root)
    first = measure(str(root), "auto", None, time.time_ns())
    assert per_folder(first) == {"INBOX": (100, 1), "Entw\\xfcrfe": (700, 1)}
    add_message(maildir_folder(root), 1, where="new")  # INBOX changes, the root does not
    again = measure(str(root), "auto", first, time.time_ns())
    assert per_folder(again) == {"INBOX": (101, 2), "Entw\\xfcrfe": (700, 1)}


def _changed_in_one_tick(*folders: bytes) -> None:
    """Change each folder's cur/ until their ctimes are equal (the kernel stamps with a coarse
    clock): folders alike to a stamp, as an attacker can make them. Gives up after a while."""
    curs = [os.path.join(f, b"cur") for f in folders]
    for _ in range(1000):
        for cur in curs:
            open(os.path.join(cur, b"t"), "wb").close()
        for cur in curs:
            os.unlink(os.path.join(cur, b"t"))
        if len({os.stat(cur).st_ctime_ns for cur in curs}) == 1:
            return


def test_folders_whose_names_differ_on_disk_keep_their_own_readings(tmp_path: Path) -> None:
    # ".\xff" (a byte) holds mail, ".\\xff" (four characters) is empty. Shown alike, the
    # empty one's reading was reused for both once their stamps were equal.
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100)
    byte, literal = maildir_folder(root, b"\xff"), maildir_folder(root, b"\\xff")
    add_message(byte, 900)
    _changed_in_one_tick(byte, literal)
    first = measure(str(root), "auto", None, FAR_FUTURE)
    assert per_folder(first) == {"INBOX": (100, 1), "\\xff": (900, 1), "\\\\xff": (0, 0)}
    add_message(root, 1, where="new")  # INBOX changes: the other folders are reused
    again = measure(str(root), "auto", first, FAR_FUTURE)
    assert per_folder(again) == {"INBOX": (101, 2), "\\xff": (900, 1), "\\\\xff": (0, 0)}
    assert unchanged(str(root), again)  # each found again by its name on disk
    add_message(byte, 50, where="new")
    assert not unchanged(str(root), again)


def test_previous_of_another_format_is_not_reused(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100)
    backdate(root)
    first = measure(str(root), "auto", None, time.time_ns())
    fake = MailboxUsage(Format.MBOX, tuple(f.__class__(f.name, 999, 9, f.stamp) for f in first.folders))
    assert measure(str(root), "auto", fake, time.time_ns()) == first


# -- the new/ -> cur/ race ----------------------------------------------------------------------


def _race_folder(tmp_path: Path, count: int) -> tuple[bytes, int]:
    folder = maildir_folder(tmp_path / "Maildir")
    total = 0
    for i in range(count):
        size = 100 + i
        add_message(folder, size, where="new", with_size=i % 2 == 0)
        total += size
    return folder, total


def _move_to_cur(folder: bytes, name: bytes) -> None:
    os.rename(os.path.join(folder, b"new", name), os.path.join(folder, b"cur", name + b":2,S"))


def test_mail_moving_new_to_cur_is_counted_once_under_a_real_race(tmp_path: Path) -> None:
    folder, total = _race_folder(tmp_path, 400)
    stop = threading.Event()

    def mover() -> None:
        for name in sorted(os.listdir(os.path.join(folder, b"new"))):
            if stop.is_set():
                return
            _move_to_cur(folder, name)
            time.sleep(0.0002)

    thread = threading.Thread(target=mover)
    results: list[FolderUsage] = []
    thread.start()
    try:
        while thread.is_alive() and len(results) < 2000:
            results.append(read_folder(folder))
    finally:
        stop.set()
        thread.join()
    results.append(read_folder(folder))
    assert len(results) >= 3
    assert os.listdir(os.path.join(folder, b"new")) == []
    wrong = [(r.bytes, r.messages) for r in results if (r.bytes, r.messages) != (total, 400)]
    assert wrong == []


def test_move_right_after_new_is_listed_is_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, total = _race_folder(tmp_path, 6)
    original = maildir._read_dir
    moves = []

    def read_then_move(
        fd: int, sub: str, skip: frozenset[str] | set[str], collect: bool, profile: Profile
    ) -> tuple[int, int, set[str], list[str]]:
        result = original(fd, sub, skip, collect, profile)
        if sub == "new":
            left = sorted(os.listdir(os.path.join(folder, b"new")))
            if left:  # on every attempt: retrying alone cannot make the count right
                _move_to_cur(folder, left[0])
                moves.append(left[0])
        return result

    monkeypatch.setattr(maildir, "_read_dir", read_then_move)
    usage = read_folder(folder)
    assert len(moves) >= 2
    assert (usage.bytes, usage.messages) == (total, 6)


def test_folder_changing_while_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, total = _race_folder(tmp_path, 3)
    original = maildir._read_dir
    delivered: list[bytes] = []

    def read_then_deliver(
        fd: int, sub: str, skip: frozenset[str] | set[str], collect: bool, profile: Profile
    ) -> tuple[int, int, set[str], list[str]]:
        result = original(fd, sub, skip, collect, profile)
        if sub == "cur" and not delivered:
            delivered.append(add_message(folder, 1000, where="new"))
        return result

    monkeypatch.setattr(maildir, "_read_dir", read_then_deliver)
    usage = read_folder(folder)
    assert (usage.bytes, usage.messages) == (total + 1000, 4)
    assert usage.stamp == folder_stamp(folder)


GUID = "3b7e0e1ac36e5b63a50e0000f5d70e4f"


@pytest.mark.parametrize("fmt", ["auto", "maildir"])
def test_dovecots_layout_index_is_unknown_not_empty(tmp_path: Path, fmt: FormatSetting) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root / GUID), 4000)
    (root / "dovecot.list.index").write_bytes(b"\0" * 64)
    (root / "maildirsize").write_text("10000S\n4000 1\n")
    usage = measure(str(root), fmt)
    assert not usage.known and "LAYOUT=index" in (usage.error or "")


def test_a_maildir_with_dovecots_list_index_and_a_guid_named_folder_is_a_maildir(tmp_path: Path) -> None:
    root = maildir_folder(tmp_path / "Maildir")
    add_message(root, 100)
    (Path(os.fsdecode(root)) / "dovecot.list.index").write_bytes(b"\0" * 64)
    add_message(maildir_folder(Path(os.fsdecode(root)) / f".{GUID}"), 200)
    usage = measure(os.fsdecode(root), "auto")
    assert usage.known and usage.all_bytes == 300


def test_a_home_with_only_files_that_are_not_mbox_is_unknown(tmp_path: Path) -> None:
    home = tmp_path / "store"
    home.mkdir()
    (home / "1a2b.env").write_text("sender\n")
    (home / "1a2b.msg").write_text("Subject: x\n\nhello\n")
    (home / ".subscriptions").write_text("Sent\n")
    usage = measure(str(home), "auto")
    assert not usage.known and "1a2b.env" in (usage.error or "")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / ".subscriptions").write_text("Sent\n")  # dot files are no mail: empty, as before
    assert measure(str(bare), "auto").known


def test_a_guid_named_symlink_is_not_followed_to_call_a_maildir_layout_index(tmp_path: Path) -> None:
    elsewhere = maildir_folder(tmp_path / "elsewhere")
    root = maildir_folder(tmp_path / "Maildir")
    add_message(root, 100)
    shutil.rmtree(Path(os.fsdecode(root)) / "cur")
    shutil.rmtree(Path(os.fsdecode(root)) / "new")
    (Path(os.fsdecode(root)) / GUID).symlink_to(os.fsdecode(elsewhere))
    usage = measure(os.fsdecode(root), "maildir")
    assert "LAYOUT=index" not in (usage.error or "")


def test_an_mbox_home_is_listed_twice_per_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once to tell it from a Maildir, once for its mbox files and once more to see that they
    stayed as read (a file renamed meanwhile would go uncounted): it was listed four times
    before that (the Maildir test again, and a LAYOUT=index test of its own)."""
    home = tmp_path / "home"
    write_mbox(home / "inbox", ["a\n"])
    write_mbox(home / "Sent", ["b\n"])
    listings = [0]
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(*args: Any) -> Any:
        listings[0] += 1
        return real_listdir(*args)

    def scandir(*args: Any) -> Any:
        listings[0] += 1
        return real_scandir(*args)

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)
    usage = measure(str(home), "auto")
    assert usage.known and len(usage.folders) == 2
    assert listings[0] == 3
