"""Maildir++ ``maildirsize`` files: parse, compare, rewrite the way Courier, Dovecot and Exim expect."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from dataclasses import dataclass

from quotagate.model import Limits, MaildirsizeInfo

FILE_NAME = "maildirsize"
# Maildir++: a maildirsize larger than this must be recalculated by its readers.
MAX_TRUSTED_BYTES = 5120


@dataclass(frozen=True)
class Parsed:
    info: MaildirsizeInfo | None
    problem: str | None = None


def parse(text: str) -> Parsed:
    """Parse the quota definition line and sum the ``bytes count`` lines (negatives allowed)."""
    lines = text.split("\n")
    if not lines or not text:
        return Parsed(None, "empty file")
    definition = lines[0].strip()
    total_bytes = total_msgs = 0
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            return Parsed(None, f"line {number}: expected 'bytes count'")
        try:
            b, m = int(fields[0]), int(fields[1])
        except ValueError:
            return Parsed(None, f"line {number}: not numbers")
        total_bytes += b
        total_msgs += m
    return Parsed(MaildirsizeInfo(total_bytes, total_msgs, definition))


def definition_for(limits: Limits) -> str:
    """The Maildir++ quota definition for our limits, e.g. ``524288000S,1000C``."""
    parts = []
    if limits.bytes:
        parts.append(f"{limits.bytes}S")
    if limits.messages:
        parts.append(f"{limits.messages}C")
    return ",".join(parts)


def read(root: str) -> Parsed | None:
    """The mailbox's maildirsize, or None when it has none."""
    try:
        with open(os.path.join(root, FILE_NAME), "rb") as f:
            raw = f.read(MAX_TRUSTED_BYTES * 16)
    except FileNotFoundError:
        return None
    return parse(raw.decode("ascii", "replace"))


def rewrite(root: str, definition: str, bytes_: int, messages: int) -> None:
    """Replace maildirsize atomically (temp file in ``tmp/`` + rename), keeping owner and mode.

    The delivery agent runs as the mail user and must still be able to update the file. A
    maildirsize that is a symlink is refused: its target is not this mailbox's to rewrite.
    """
    target = os.path.join(root, FILE_NAME)
    try:
        old = os.lstat(target)
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", target)
    tmp_dir = os.path.join(root, "tmp")
    fd, tmp = tempfile.mkstemp(prefix=f"{FILE_NAME}.quotagate.", dir=tmp_dir if os.path.isdir(tmp_dir) else root)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(f"{definition}\n{bytes_} {messages}\n".encode("ascii"))
            f.flush()
            os.fsync(f.fileno())
            if old is not None:
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
            os.fchmod(f.fileno(), 0o600 if old is None else old.st_mode & 0o777)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
