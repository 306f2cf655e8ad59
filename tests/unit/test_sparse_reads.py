"""A user's sparse file is read for the data it holds, not for its apparent size: a 64 GiB file
that takes one block on disk must not keep a scan (or the watcher) reading zeros for minutes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotagate import bounded
from quotagate.accounting import PROFILES
from quotagate.usage import mbox, safefs
from quotagate.usage.maildir import read_folder
from tests.spoolgen import maildir_folder

GIB = 1 << 30
FROM_LINE = b"From sender@example.net Thu Nov 26 02:20:14 2026\n"
BUDGET = 16 << 20  # far more than the data the files below hold, far less than their holes


@pytest.fixture
def reads_capped(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Fail as soon as more than BUDGET bytes are read (os.read and os.pread): the count so far."""
    total = [0]

    def capped(real: Callable[..., bytes]) -> Callable[..., bytes]:
        def read(*args: int) -> bytes:
            data = real(*args)
            total[0] += len(data)
            if total[0] > BUDGET:
                raise AssertionError(f"read {total[0]} bytes of a sparse file")
            return data

        return read

    monkeypatch.setattr(os, "read", capped(os.read))
    monkeypatch.setattr(os, "pread", capped(os.pread))
    yield total


def _sparse(path: Path, pieces: dict[int, bytes], size: int) -> None:
    with open(path, "wb") as f:
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
        f.truncate(size)


def _message(body: bytes = b"hi\n") -> bytes:
    return FROM_LINE + b"Subject: x\n\n" + body


def test_a_sparse_mbox_is_counted_from_its_data(tmp_path: Path, reads_capped: list[int]) -> None:
    path = tmp_path / "inbox"
    # Two messages, a hole of 64 GiB, a third message after an empty line, and a "From " line
    # right after the hole: zeros precede it, not an empty line, so it starts no message.
    third = b"\n\n" + _message()
    _sparse(path, {0: _message() + b"\n" + _message(), 64 * GIB: third, 96 * GIB: b"From x\n"}, 96 * GIB + 7)
    fd = os.open(path, safefs.FILE)
    try:
        size, messages, _ = mbox.count_messages(fd)
    finally:
        os.close(fd)
    assert (size, messages) == (96 * GIB + 7, 3)
    assert reads_capped[0] < BUDGET


def test_a_sparse_message_is_sized_from_its_data(tmp_path: Path, reads_capped: list[int]) -> None:
    folder = Path(os.fsdecode(maildir_folder(tmp_path / "Maildir")))
    name = folder / "cur" / "1700000000.M1P1.host:2,S"  # no W=: read for its virtual size
    _sparse(name, {0: b"Subject: x\n\nbody\r", 64 * GIB: b"\nend\n"}, 64 * GIB + 5)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        usage, _ = read_folder(fd, "INBOX", 0, PROFILES["dovecot-count"])
    finally:
        os.close(fd)
    # Four bare LFs counted as CRLF; the CR before the hole does not pair with the LF after it.
    assert (usage.bytes, usage.messages) == (64 * GIB + 5 + 4, 1)
    assert reads_capped[0] < BUDGET


def test_a_read_given_up_on_stops_in_the_thread_it_was_left_in(tmp_path: Path) -> None:
    """Dovecot's mbox splitting reads every byte, holes too: past the job's timeout the read
    stops by itself, rather than read on for hours in an abandoned thread at each scan."""
    path = tmp_path / "inbox"
    _sparse(path, {0: _message()}, 1 << 43)

    def count(_: None) -> object:
        fd = os.open(path, safefs.FILE)
        try:
            return mbox.count_dovecot(fd)
        finally:
            os.close(fd)

    before = {t for t in threading.enumerate() if t.name == "quotagate-bounded"}
    outcome = list(bounded.in_thread(count, [None], 0.3, lambda _: "timed out"))
    assert outcome == ["timed out"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = {t for t in threading.enumerate() if t.name == "quotagate-bounded"} - before
        if not left:
            break
        time.sleep(0.05)
    assert not left, "the abandoned read is still running"
