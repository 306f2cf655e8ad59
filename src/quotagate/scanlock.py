"""Running scans periodically and never two at once: the scan lock and the ``--every`` loop."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")


def parse_duration(value: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h``, ``1d`` or ``90`` (plain seconds); must be more than 0."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(f"{value!r} is not a duration: use e.g. 30s, 5m, 1h or plain seconds")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{value!r}: the period must be more than 0 seconds")
    return seconds


class LockError(Exception):
    """The lock file cannot be opened (its directory cannot be created, no permission, ...)."""


class LockHeld(Exception):
    """Another process holds the scan lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"another scan is running (lock {path} held by {holder})")


def _holder(fd: int) -> int | None:
    """The pid the holder wrote into the file, if it is there yet."""
    try:
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """The lock file opened for writing, created when missing; never through a symlink, never a
    FIFO or device (the open does not block); with whether it has no other name (one that has is
    locked but not written: see :func:`scan_lock`).

    The default lock lies beside an SQLite file, in a directory that may belong to the user of
    the admin's own tools: whatever they put at its name must not be what root truncates.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise LockError(f"cannot open {path}: {reason}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockError(f"cannot use {path}: not a regular file (move it away)")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_nlink == 1


@contextmanager
def scan_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive, non-blocking ``flock`` on ``path`` while the block runs.

    Raises :class:`LockHeld` when another process has it, :class:`LockError` when the file cannot be
    opened or is not a plain file (a symlink, a FIFO: see :func:`_open_lock_file`).
    The kernel drops the lock when the process dies, so a crash never leaves it stale; the file
    itself is never removed (removing a lock file lets two processes lock different inodes).
    """
    fd, alone = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(path, _holder(fd)) from None
            raise LockError(f"cannot lock {path}: {exc.strerror}") from None
        # The holder's pid is written only into a file of no other name: one with hard links
        # (a backup made with cp -al or rsnapshot, or another file linked in) is locked as it is.
        if alone:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if alone:
                os.ftruncate(fd, 0)  # no stale pid for the next reader
            # A scan worker forked meanwhile shares the descriptor, and one stuck in the kernel
            # (a dead mount) outlives the scan: closing ours alone would not release the lock.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def run_every(period: float, round_: Callable[[], None], count: int | None = None) -> int:
    """Call ``round_`` every ``period`` seconds (start to start) until SIGTERM or SIGINT, or ``count``
    rounds; returns the number of rounds run.

    The stop signals are blocked for the whole loop and only *waited for* between rounds
    (``sigtimedwait``), so a scan in progress is never interrupted in the middle of its store
    transaction, and there is no handler racing the sleep. Worker processes forked by a scan inherit
    the mask, so they finish their part too.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    rounds = 0
    try:
        next_start = time.monotonic()
        while True:
            round_()
            rounds += 1
            if count is not None and rounds >= count:
                return rounds
            next_start += period
            now = time.monotonic()
            if now > next_start:
                log.warning(
                    "the scan took %.1f s, longer than the period (%g s): starting the next one now",
                    now - next_start + period,
                    period,
                )
                next_start = now
            received = signal.sigtimedwait(STOP_SIGNALS, next_start - now)
            if received is not None:
                log.info("%s received: stopping", signal.Signals(received.si_signo).name)
                return rounds
    finally:
        # A stop signal that came during the last round would be delivered on unblocking and kill
        # the process (SIGTERM) or raise KeyboardInterrupt (SIGINT): we are stopping anyway, take it.
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
