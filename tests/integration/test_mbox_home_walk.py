"""A mail user with an mbox home makes thousands of (empty) sub-directories or files in it, or
nests them very deep. The walk of the home holds one descriptor per level of the current path
(not one per sub-directory, which made every other open of the process fail with EMFILE
meanwhile: other mailboxes unknown, inotify out of watches, connections refused), and stops at
a depth, a number of entries and a length of names no mail program makes: empty files cost
their owner no disk, and each would be a folder of the reading, in memory and in the store."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from quotagate.usage import mbox, safefs
from quotagate.usage.mailbox import measure
from quotagate.usage.safefs import Roots
from tests.integration.scanenv import DOMAIN
from tests.spoolgen import write_mbox

WIDE = 3000


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _home_with_many_subdirectories(spool: Path) -> Path:
    home = spool / DOMAIN / "mallory"
    write_mbox(home / "inbox", ["hello"])
    for i in range(WIDE):
        (home / f"d{i}").mkdir(parents=True)
    return home


def test_listing_a_wide_mbox_home_holds_a_bounded_number_of_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: mallory makes 3000 empty directories in his mbox home. Expected: the listing
    holds a bounded number of descriptors however wide a directory is (as the LAYOUT=fs walk,
    which holds one per level)."""
    spool = tmp_path / "spool"
    home = _home_with_many_subdirectories(spool)
    peak = [0]
    real_open_dir = safefs.open_dir

    def counting(name: str, dir_fd: int) -> int | None:
        fd = real_open_dir(name, dir_fd)
        peak[0] = max(peak[0], _open_descriptors())
        return fd

    monkeypatch.setattr(safefs, "open_dir", counting)
    before = _open_descriptors()
    with _dir(home) as fd:
        listing = mbox.mbox_files(fd)
    assert listing.files == ["inbox"]
    held = peak[0] - before
    assert held <= 200, f"the walk of one user's home held {held} descriptors at once"


def test_an_mbox_home_nested_deeper_than_any_mail_program_makes_is_unknown(tmp_path: Path) -> None:
    """Attack: mallory nests directories 100 deep in his mbox home. Expected: the walk stops at
    mbox.MAX_DEPTH, and the mailbox is unknown with a reason, never counted without them."""
    spool = tmp_path / "spool"
    home = spool / DOMAIN / "mallory"
    write_mbox(home / "inbox", ["hello"])
    deep = home.joinpath(*["d"] * 100)
    deep.mkdir(parents=True)
    write_mbox(deep / "hidden", ["x" * 5000])
    usage = measure(str(home), "auto", None, 0, Roots.of(spool), None, "Maildir").usage
    assert not usage.known and "nested deeper" in (usage.error or ""), usage


def _mbox_home(tmp_path: Path) -> Path:
    home = tmp_path / "spool" / DOMAIN / "mallory"
    write_mbox(home / "inbox", ["hello"])
    return home


def _touch_all(directory: int, names: list[str]) -> None:
    for name in names:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=directory))


def test_an_mbox_home_with_more_files_than_max_entries_is_unknown(tmp_path: Path) -> None:
    """Attack: mallory fills his mbox home with mbox.MAX_ENTRIES + 1 empty files. Expected: the
    walk stops there, and the mailbox is unknown with a reason."""
    home = _mbox_home(tmp_path)
    with _dir(home) as fd:
        _touch_all(fd, [f"f{i:06d}" for i in range(mbox.MAX_ENTRIES + 1)])
    usage = measure(str(home), "auto", None, 0, Roots.of(tmp_path / "spool"), None, "").usage
    assert not usage.known and "more than" in (usage.error or ""), (usage.error, len(usage.folders))


def test_dot_files_count_against_the_bound_before_they_are_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: mallory fills his mbox home with empty dot files, each of which the walk opens to
    tell it from an mbox named so. Expected: they count against MAX_ENTRIES as any file does:
    the walk stops there (unknown, with a reason) having opened no more than that. (Before, dot
    files were looked at first and never counted: 200,000 of them cost ~190x the bound.)"""
    monkeypatch.setattr(mbox, "MAX_ENTRIES", 50)
    opened: list[str] = []
    real = mbox.file_is_mbox

    def counting(fd: int, name: str, **kw: bool) -> bool:
        opened.append(name)
        return real(fd, name, **kw)

    monkeypatch.setattr(mbox, "file_is_mbox", counting)
    home = _mbox_home(tmp_path)
    with _dir(home) as fd:
        _touch_all(fd, [f".d{i:04d}" for i in range(2000)])
    usage = measure(str(home), "auto", None, 0, Roots.of(tmp_path / "spool"), None, "").usage
    assert not usage.known and "more than" in (usage.error or ""), (usage.error, len(usage.folders))
    assert len(opened) <= 60, len(opened)


def test_an_mbox_home_of_long_names_deep_down_is_unknown_and_costs_bounded_memory(tmp_path: Path) -> None:
    """Attack: 1,500 empty files with names of 200 characters at the bottom of 64 directories
    with names of 200 characters: each file's folder name is 13 kB (and listed again while the
    home settles). Expected: the walk stops past mbox.MAX_NAMES characters of names, the
    mailbox is unknown, and measuring it peaks well under 32 MiB."""
    home = _mbox_home(tmp_path)
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for depth in range(64):
            name = f"d{depth:03d}".ljust(200, "x")
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        _touch_all(fd, [f"f{i:06d}".ljust(200, "y") for i in range(1_500)])
    finally:
        os.close(fd)
    tracemalloc.start()
    try:
        usage = measure(str(home), "auto", None, 0, Roots.of(tmp_path / "spool"), None, "").usage
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not usage.known, f"known, with {len(usage.folders)} folders"
    assert peak < 32 * 2**20, f"one mbox home of 1,500 empty files measured with a peak of {peak / 2**20:.0f} MiB"


class _dir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
