"""Maildir++ ``maildirsize`` files: parse, compare, rewrite the way Courier, Dovecot and Exim expect."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat

from msgspec import Struct
from msgspec.structs import replace

from quotagate.model import Limits, MaildirsizeInfo
from quotagate.usage import safefs
from quotagate.usage.safefs import Node, Roots

FILE_NAME = "maildirsize"
# Maildir++: a maildirsize larger than this must be recalculated by its readers.
MAX_TRUSTED_BYTES = 5120
MAX_SIZE = 2**63 - 1  # what a 64-bit file size (and every store's BIGINT) can hold
_MAX_DIGITS = len(str(MAX_SIZE)) + 1  # a sign and 19 digits
_DEFINITION = re.compile(r"(?:\d{1,19}[SC](?:,\d{1,19}[SC])*)?")


class Parsed(Struct, frozen=True):
    info: MaildirsizeInfo | None
    problem: str | None = None


def parse(text: str) -> Parsed:
    """Parse the quota definition line and sum the ``bytes count`` lines (negatives allowed).

    A number, or a running total, that does not fit in 63 bits is not a size: the file is then
    unusable, like any other malformed one.
    """
    if not text:
        return Parsed(None, "empty file")
    if "\0" in text:
        return Parsed(None, "holds NUL bytes")  # broken, to Dovecot too: it counts the files
    # A last line without its line break is one being written: Dovecot leaves it out.
    lines = text.split("\n")
    if len(lines) > 1:
        lines.pop()
    definition = lines[0].strip()
    total_bytes = total_msgs = size_lines = 0
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        size_lines += 1
        if len(fields) != 2:
            return Parsed(None, f"line {number}: expected 'bytes count'")
        if any(len(f) > _MAX_DIGITS for f in fields):
            return Parsed(None, f"line {number}: number too large")
        try:
            b, m = int(fields[0]), int(fields[1])
        except ValueError:
            return Parsed(None, f"line {number}: not numbers")
        total_bytes += b
        total_msgs += m
        if not (abs(total_bytes) <= MAX_SIZE and abs(total_msgs) <= MAX_SIZE):
            return Parsed(None, f"line {number}: totals too large")
    return Parsed(MaildirsizeInfo(total_bytes, total_msgs, definition, size_lines=size_lines, file_bytes=len(text)))


def definition_for(limits: Limits) -> str:
    """The Maildir++ quota definition for our limits, e.g. ``524288000S,1000C``."""
    parts = []
    if limits.bytes:
        parts.append(f"{limits.bytes}S")
    if limits.messages:
        parts.append(f"{limits.messages}C")
    return ",".join(parts)


def limits_of(definition: str) -> Limits | None:
    """The limits a quota definition line sets (``1000S,50C``: 0 or absent is unlimited), as
    Dovecot's ``maildir_parse_limit`` reads it; None when it is not one."""
    if not valid_definition(definition):
        return None
    found = {part[-1]: int(part[:-1]) for part in definition.split(",") if part}
    return Limits(found.get("S", 0), found.get("C", 0))


def valid_definition(definition: str) -> bool:
    """A Maildir++ quota definition: ``1000S``, ``1000S,50C``, ``50C`` or empty."""
    return _DEFINITION.fullmatch(definition) is not None


def read(root_fd: int, owner: int | None = None) -> Parsed | None:
    """The maildirsize of the opened Maildir root, or None when it has none.

    It must be a regular file with one link, owned by ``owner`` (the mailbox's owner) when given;
    anything else is a problem, and not a byte of it is read.
    """
    try:
        found = safefs.read_with_stat(FILE_NAME, root_fd, MAX_TRUSTED_BYTES * 16, owner)
    except OSError as exc:
        return Parsed(None, f"{FILE_NAME}: {exc.strerror or exc}")
    if found is None:
        return None
    raw, st = found  # the file read, as fstat'ed before it was: its mtime says how old it is
    parsed = parse(raw.decode("ascii", "replace"))
    if parsed.info is None:
        return parsed
    return Parsed(replace(parsed.info, file_bytes=len(raw), changed_at=st.st_mtime), parsed.problem)


_TEMP_PREFIX = f"{FILE_NAME}.quotagate-tmp."


def _remove_leftovers(dir_fd: int) -> None:
    """Temp files an interrupted rewrite left behind (unlinking a name never follows it)."""
    with os.scandir(dir_fd) as entries:
        leftovers = [e.name for e in entries if e.name.startswith(_TEMP_PREFIX)]
    for name in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def rewrite(node: Node, path: str, roots: Roots, definition: str, bytes_: int, messages: int) -> None:
    """Replace the maildirsize of the Maildir open at ``node`` atomically, keeping owner and mode.

    ``node`` is the very directory that was measured (see :mod:`safefs`), so nothing a user swaps
    between measuring and writing redirects the write: the temp file is created
    ``O_EXCL | O_NOFOLLOW`` in that directory, owner and mode are set through its descriptor,
    and the rename stays within the directory. Before the rename ``path`` is walked again and
    must still lead to the same directory, so a user who moves their Maildir away meanwhile gets
    nothing written where it went. An existing maildirsize that is not a regular file with one
    link owned by the mailbox owner is refused, and so is a Maildir reached through a symlink
    below the roots: its owner may have pointed it at another user's Maildir (of the same owner
    as its files), which would get this mailbox's limit. A temp file left by an interrupted run
    is removed by the next.
    """
    if not valid_definition(definition):
        raise ValueError(f"not a Maildir++ quota definition: {definition[:40]!r}")
    if not node.is_dir:
        raise OSError(errno.ENOTDIR, "no Maildir there", path)
    if node.followed:
        raise OSError(errno.EPERM, "reached through a symlink (its owner may point it at another user's Maildir)", path)
    dir_fd = node.fd
    _remove_leftovers(dir_fd)
    try:
        old: os.stat_result | None = os.stat(FILE_NAME, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None:
        if not stat.S_ISREG(old.st_mode) or old.st_nlink != 1:
            raise OSError(errno.EINVAL, "not a regular file with one link", FILE_NAME)
        if old.st_uid != node.st.st_uid:
            raise OSError(errno.EPERM, "not owned by the mailbox owner", FILE_NAME)
    owner = old if old is not None else node.st
    mode = 0o600 if old is None else old.st_mode & 0o777
    temp = f"{_TEMP_PREFIX}{os.getpid()}.{os.urandom(6).hex()}"  # as secrets.token_hex, without hmac
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, f"{definition}\n{bytes_} {messages}\n".encode("ascii"))
            os.fchown(fd, owner.st_uid, owner.st_gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        with safefs.opened(path, roots) as again:
            if again is None or (again.st.st_dev, again.st.st_ino) != (node.st.st_dev, node.st.st_ino):
                raise OSError(errno.ESTALE, "the Maildir moved while its maildirsize was rewritten", path)
        os.replace(temp, FILE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
