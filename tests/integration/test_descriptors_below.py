"""A walk down a path of directories (safefs.open_below: an mbox file's directories, a LAYOUT=fs
folder, watch's tree targets) that meets a level it cannot open (EACCES, EIO, EMFILE) keeps no
descriptor of the levels above it: a long-running ``serve`` or ``watch`` that meets such a
directory at every look must not run out of descriptors.

Root reads a ``chmod 000`` directory anyway; the EACCES a root-squashed NFS spool or a user's FUSE
mount (no allow_other) gives root is made here as uid 65534 (tests/integration's as_nobody)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from quotagate.usage import maildir, mbox, safefs
from tests.integration.conftest import as_nobody, make_unreadable
from tests.spoolgen import fs_folder, write_mbox


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _leaked(call: Callable[[int], object], root: Path, times: int = 5) -> tuple[int, list[str]]:
    """Descriptors open after ``call(root_fd)`` ``times`` times, less before; and its outcomes."""

    def run() -> tuple[int, list[str]]:
        root_fd = os.open(root, safefs.DIRECTORY)
        try:
            before = _open_fds()
            outcomes = []
            for _ in range(times):
                try:
                    outcomes.append(repr(call(root_fd)))
                except OSError as exc:
                    outcomes.append(f"OSError {exc.errno}")
            return _open_fds() - before, outcomes
        finally:
            os.close(root_fd)

    leaked: tuple[int, list[str]] = as_nobody(run)
    return leaked


def test_opening_an_mbox_file_below_an_unopenable_directory_leaks_no_descriptor(
    open_dir: Path, open_up: Callable[[Path], None]
) -> None:
    """An mbox home holding ``Archive/2024/jan``; ``Archive/2024`` cannot be opened by the scan
    (EACCES). mbox.open_file("Archive/2024/jan") five times: an OSError each time, and no
    descriptor left open."""
    home = open_dir / "home"
    write_mbox(home / "Archive" / "2024" / "jan", ["x" * 1000])
    open_up(open_dir)
    make_unreadable(home / "Archive" / "2024")

    leaked, outcomes = _leaked(lambda fd: mbox.open_file(fd, "Archive/2024/jan"), home)

    assert leaked == 0, f"{leaked} descriptors leaked by 5 calls ({outcomes})"


def test_asking_whether_an_mbox_counted_before_is_still_one_leaks_no_descriptor(
    open_dir: Path, open_up: Callable[[Path], None]
) -> None:
    """mbox.file_is_mbox (as the scan asks of each mbox file counted at the last reading) of
    ``Archive/jan`` while ``Archive/`` cannot be opened (EACCES), five times: False each time,
    and no descriptor left open."""
    home = open_dir / "home"
    write_mbox(home / "Archive" / "jan", ["x" * 1000])
    open_up(open_dir)
    make_unreadable(home / "Archive")

    leaked, outcomes = _leaked(lambda fd: mbox.file_is_mbox(fd, "Archive/jan"), home)

    assert leaked == 0, f"{leaked} descriptors leaked by 5 calls ({outcomes})"


def test_opening_a_layout_fs_folder_below_an_unopenable_directory_leaks_no_descriptor(
    open_dir: Path, open_up: Callable[[Path], None]
) -> None:
    """A LAYOUT=fs Maildir with the folder ``Archive/2024/Q1``; ``Archive/2024`` cannot be opened
    (EACCES) when the folder is opened (after the listing, as an unchanged scan stamps each
    folder). maildir.open_folder five times: an OSError each time, and no descriptor left open."""
    md = open_dir / "Maildir"
    fs_folder(md, "Archive/2024/Q1")
    open_up(open_dir)
    make_unreadable(md / "Archive" / "2024")

    leaked, outcomes = _leaked(lambda fd: maildir.open_folder(fd, "Archive/2024/Q1", "fs"), md)

    assert leaked == 0, f"{leaked} descriptors leaked by 5 calls ({outcomes})"
