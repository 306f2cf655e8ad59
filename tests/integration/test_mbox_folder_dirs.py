"""What an mbox home's user can do to a folder directory that looks like a Maildir (cur/, new/ or
tmp/ in it) or to an mbox file the last reading counted, so that the scan leaves mail out: a
write lease on a file (the scan's non-blocking open fails with EWOULDBLOCK), or an mbox folder
kept in tmp/. Each leaves the mailbox unknown (kept over) or counts the mail; none reads as a
mailbox known with less than it holds."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from quotagate.watch.tracker import _directories as tracker_directories
from tests.integration.scanenv import Env
from tests.spoolgen import write_mbox

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)


@contextlib.contextmanager
def write_lease(path: Path) -> Iterator[None]:
    """Hold a write lease on ``path`` (its owner may: F_SETLEASE), as tests/integration's lease test."""
    old = signal.signal(signal.SIGIO, signal.SIG_IGN)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
        yield
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, old)


def test_a_lease_on_the_mbox_counted_before_never_lets_an_empty_maildir_beside_it_read_alone(env: Env) -> None:
    """dan's home is an mbox home, ``inbox`` 20 kB, limit 10 kB: over. He then makes an empty
    ``Maildir/`` (cur/, new/, tmp/: [spool] maildir_subdir) and holds a write lease on ``inbox``,
    so that the scan cannot tell whether the file counted before is still an mbox. Unknown, or
    over quota (the mbox counted with the Maildir); never known with 0 bytes while the delivery
    agent goes on writing the mbox."""
    home = env.spool / "example.org" / "dan"
    home.mkdir(parents=True)
    write_mbox(home / "inbox", ["x" * 10_000, "y" * 10_000])
    dan = env.add("dan", Limits(10_000), path="example.org/dan")
    first = env.scan(full=True).readings[dan]
    assert first.usage.known and first.state is State.OVER, first

    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True)
    with write_lease(home / "inbox"):
        second = env.scan().readings[dan]

    assert not second.usage.known or second.state is State.OVER, (
        f"known, {second.bytes} bytes, {second.state}, at {second.path}: the 20 kB mbox left out"
    )


def test_a_lease_on_an_mbox_folder_beside_an_empty_cur_does_not_hide_it(env: Env) -> None:
    """alice's mbox home holds ``inbox`` and the folder ``Archive/jan`` (8 kB), and an empty
    ``Archive/cur/`` and ``Archive/new/`` (Dovecot's IMAP folders "Archive/cur" and "Archive/new").
    She holds a write lease on ``Archive/jan``: the scan cannot read whether it is an mbox, and
    ``Archive/`` must not be passed over as a Maildir for it. Unknown, or over quota with the
    8 kB counted."""
    env.configure(spool={"layout": "{local}/mail", "format": "mbox", "maildir_subdir": ""})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Archive" / "jan", ["x" * 4000, "y" * 4000])
    (home / "Archive" / "cur").mkdir()
    (home / "Archive" / "new").mkdir()
    address = env.add("alice", Limits(4000, 0))
    before = env.scan(full=True).readings[address]
    assert not before.usage.known or before.state is State.OVER, before  # without the lease: counted

    with write_lease(home / "Archive" / "jan"):
        reading = env.scan(full=True).readings[address]

    folders = [(f.name, f.bytes) for f in reading.usage.folders]
    assert not reading.usage.known or (reading.state is State.OVER and reading.bytes > 8000), folders


@pytest.mark.parametrize("part", ["cur", "new", "tmp"])
def test_an_mbox_folder_with_a_maildir_like_name_in_cur_new_or_tmp_is_not_passed_over(env: Env, part: str) -> None:
    """alice keeps 8 kB as the IMAP folder ``Archive/tmp/1700000000.q1`` (Dovecot keeps it as that
    mbox file), named as a Maildir names its messages (a time, then a dot), and so in cur/ and
    new/. ``Archive/`` is not passed over as a Maildir for its name: unknown, or over quota with
    the 8 kB counted."""
    env.configure(spool={"layout": "{local}/mail", "format": "mbox", "maildir_subdir": ""})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Archive" / part / "1700000000.q1", ["x" * 4000, "y" * 4000])
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan(full=True).readings[address]

    folders = [(f.name, f.bytes) for f in reading.usage.folders]
    assert not reading.usage.known or (reading.state is State.OVER and reading.bytes > 8000), folders


def test_a_folder_directory_under_a_lease_is_watched(tmp_path: Path) -> None:
    """Watch plans its watches of an mbox home by walking it as the measurement does, passing over
    a Maildir. alice holds a write lease on ``Archive/jan`` beside an empty ``Archive/cur/`` and
    ``Archive/new/``: whether ``Archive/`` is a Maildir cannot be told while it lasts, so it is
    watched (a change in it is seen once the lease ends), and her other folders are watched too."""
    home = tmp_path / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Archive" / "jan", ["x" * 4000])
    (home / "Archive" / "cur").mkdir()
    (home / "Archive" / "new").mkdir()
    write_mbox(home / "Work" / "feb", ["y" * 100])
    root = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with write_lease(home / "Archive" / "jan"):
            found = tracker_directories(root, True)
    finally:
        os.close(root)
    assert sorted(found) == ["Archive", "Archive/cur", "Archive/new", "Work"]
