"""A mail user renames their folders (or moves mail between them) while their mailbox is measured.

A Maildir's (or an mbox home's) folders are listed, then opened and read one after another. A
folder renamed between the listing and its open, or mail moved from a folder not read yet into
one read already, would go uncounted: so after reading, the folders are listed and looked at
again, and a mailbox that did not stay as read is read again (what did not change is reused),
and after three tries is unknown, never known with less than it holds. A user who renames
``.Archive`` back and forth in a loop (IMAP RENAME, or ``mv``) won this race at many scans."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from quotagate.usage import maildir, mbox
from quotagate.usage.mailbox import measure
from quotagate.usage.safefs import Roots
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder, write_mbox


def _measure(root: Path, spool: Path, fmt: str = "auto") -> tuple[bool, int, str | None]:
    found = measure(str(root), fmt, None, 0, Roots.of(spool), None, "Maildir")  # type: ignore[arg-type]
    usage = found.usage
    return usage.known, usage.all_bytes, usage.error or usage.warning


def test_a_folder_renamed_between_listing_and_reading_is_not_silently_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: alice renames ``.Archive`` (900 of her 1000 bytes) to ``.Archive2`` right after the
    scan listed her Maildir's folders. Expected: the measurement counts the folder (under either
    name, e.g. by listing again when the root changed while it was read), or the mailbox is not
    known with less; never a known reading of 100 bytes with no warning."""
    spool = tmp_path / "spool"
    root = spool / DOMAIN / "alice" / "Maildir"
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, "Archive"), 900)
    listed = maildir.folder_names

    def list_then_rename(root_fd: int, layout: maildir.Layout = "maildir++") -> maildir.Folders:
        found = listed(root_fd, layout)
        if (root / ".Archive").exists():
            os.rename(root / ".Archive", root / ".Archive2")  # the user's IMAP RENAME, just now
        return found

    monkeypatch.setattr(maildir, "folder_names", list_then_rename)
    known, counted, said = _measure(root, spool)
    assert not known or counted == 1000, f"known with {counted} of 1000 bytes, saying {said!r}"


def test_mail_moved_from_an_unread_folder_into_a_read_one_is_not_silently_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: alice moves her 900-byte message from ``.Zed`` (read last) into INBOX's cur/
    (read first) once INBOX has been read. Expected: the message counts once, or the mailbox is
    not known with less (the folder read first changed afterwards: its stamp says so)."""
    spool = tmp_path / "spool"
    root = spool / DOMAIN / "alice" / "Maildir"
    add_message(maildir_folder(root), 100)
    moved = Path(os.fsdecode(add_message(maildir_folder(root, "Zed"), 900)))
    read = maildir.read_folder

    def read_then_move(folder_fd: int, name: str, *args: object, **kwargs: object) -> object:
        result = read(folder_fd, name, *args, **kwargs)  # type: ignore[arg-type]
        if name == maildir.INBOX and moved.exists():
            os.rename(moved, root / "cur" / moved.name)
        return result

    monkeypatch.setattr(maildir, "read_folder", read_then_move)
    known, counted, said = _measure(root, spool)
    assert not known or counted == 1000, f"known with {counted} of 1000 bytes, saying {said!r}"


def test_an_mbox_folder_renamed_between_listing_and_reading_is_not_silently_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in an mbox home: ``mail/Archive`` renamed after ``mbox_files`` listed it is
    "removed while we looked". Expected: counted, or not known with less."""
    spool = tmp_path / "spool"
    home = spool / DOMAIN / "alice"
    write_mbox(home / "inbox", ["a" * 50])
    write_mbox(home / "Archive", ["b" * 5000])
    full = sum(p.stat().st_size for p in home.iterdir())
    listed = mbox.mbox_files

    def list_then_rename(root_fd: int, beside: str = "") -> mbox.Listing:
        found = listed(root_fd, beside)
        if (home / "Archive").exists():
            os.rename(home / "Archive", home / "Archive2")
        return found

    monkeypatch.setattr(mbox, "mbox_files", list_then_rename)
    known, counted, said = _measure(home, spool, "mbox")
    assert not known or counted == full, f"known with {counted} of {full} bytes, saying {said!r}"


@pytest.mark.skipif(os.geteuid() != 0, reason="scans as root, as in production")
def test_a_user_renaming_a_folder_in_a_loop_is_never_published_under_quota(env: Env) -> None:
    """The race for real: a thread renames ``.Archive`` <-> ``.Archive2`` as fast as it can while
    full scans of alice's over-quota Maildir run. Expected: every scan finds her over quota
    (the mail never left her mailbox)."""
    root = env.maildir("alice")
    add_message(maildir_folder(root), 100)
    for _ in range(200):  # enough entries that listing and reading take a little while
        add_message(maildir_folder(root, "Other"), 1)
    add_message(maildir_folder(root, "Archive"), 5000)
    address = env.add("alice", Limits(1000))
    # Over at the scan before: a scan that cannot tell (unknown, the folders kept being renamed)
    # keeps her over.
    assert env.scan(full=True).readings[address].state is State.OVER
    stop = threading.Event()

    def renamer() -> None:
        a, b = root / ".Archive", root / ".Archive2"
        while not stop.is_set():
            try:
                os.rename(a, b)
                os.rename(b, a)
            except FileNotFoundError:
                pass

    thread = threading.Thread(target=renamer)
    thread.start()
    under = []
    try:
        for i in range(150):
            reading = env.scan(full=True).readings[address]
            if reading.state is not State.OVER:
                under.append((i, reading.state.value, reading.bytes))
    finally:
        stop.set()
        thread.join()
    assert under == [], f"published under quota at {len(under)} of 150 scans: {under[:5]}"


def test_fix_maildirsize_never_writes_the_total_of_a_measurement_that_lost_a_renamed_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race under ``scan --fix-maildirsize``: the measurement that missed ``.Archive``
    has no warning, so the maildirsize is rewritten with 100 bytes. Dovecot, Courier and Exim
    go by that file: the delivery agent then under-counts the mailbox too, until it
    recalculates. Expected: the file keeps its (correct) 1000 bytes."""
    spool = tmp_path / "spool"
    root = spool / DOMAIN / "alice" / "Maildir"
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, "Archive"), 900)
    (root / "maildirsize").write_text("10000S\n1000 2\n")
    listed = maildir.folder_names

    def list_then_rename(root_fd: int, layout: maildir.Layout = "maildir++") -> maildir.Folders:
        found = listed(root_fd, layout)
        if (root / ".Archive").exists():
            os.rename(root / ".Archive", root / ".Archive2")
        return found

    monkeypatch.setattr(maildir, "folder_names", list_then_rename)
    measure(str(root), "auto", None, 0, Roots.of(spool), (), "Maildir")
    assert (root / "maildirsize").read_text() == "10000S\n1000 2\n"
