"""Reading mbox files: bytes from the file size, messages from ``From `` separator lines."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from typing import NamedTuple

from quotagate.accounting import FILES, MboxRule, Profile, SizeRule
from quotagate.bounded import check_deadline
from quotagate.model import FolderUsage
from quotagate.usage import mboxfrom, safefs
from quotagate.usage.extents import data_chunks
from quotagate.usage.maildir import changed_ns

_CHUNK = 1 << 20
# A separator is a "From " line at the start of the file or after an empty line (LF or CRLF).
_SEPARATORS = (b"\n\nFrom ", b"\n\r\nFrom ")
_CARRY = max(len(s) for s in _SEPARATORS) - 1
_SKIPPED_SUFFIXES = (".lock", ".lck")
_FROM = b"From "
_MAILDIR_DIRS = ("cur", "new", "tmp")  # a Maildir within an mbox home (see holds_maildir)


MboxStamp = tuple[int, int, int]


def stamp_of(st: os.stat_result) -> MboxStamp:
    """An mbox file's stamp: ``(ctime_ns, size, inode)``. The ctime, not the mtime: its owner can
    set the mtime back after rewriting the file (see :func:`quotagate.usage.maildir.changed_ns`).
    The inode: ctimes come from a coarse clock, and a file renamed over another would pass for it."""
    return (changed_ns(st), st.st_size, st.st_ino)


def count_messages(fd: int) -> tuple[int, int, MboxStamp]:
    """Bytes, messages and the :func:`stamp_of` the mbox file open at ``fd``.

    Read streaming, a chunk at a time, never whole, and only where it holds data (see
    :mod:`quotagate.usage.extents`). The caller opened it (see :mod:`quotagate.usage.safefs`);
    anything but a regular file is refused here again.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    messages = 0
    carry = b""
    after = 0  # where the chunk before ended
    for offset, chunk in data_chunks(fd, st.st_size, _CHUNK):
        if offset == 0:
            messages = 1 if chunk.startswith(_FROM) else 0
        elif offset != after:
            carry = b""  # zeros came between: no separator reaches across them
        window = carry + chunk
        # Separators wholly inside the carry were counted with the previous chunk.
        messages += sum(window.count(sep) - carry.count(sep) for sep in _SEPARATORS)
        carry = window[-_CARRY:]
        after = offset + len(chunk)
    return st.st_size, messages, stamp_of(st)


def count_dovecot(fd: int, virtual: bool = False) -> tuple[int, int, MboxStamp]:
    """:func:`count_messages` with messages split as Dovecot splits them (see
    :mod:`quotagate.usage.mboxfrom`): a chunk at a time, a Content-Length's body skipped unread.
    With ``virtual`` the bytes are Dovecot's virtual sizes of the messages (``count`` quota),
    every byte read, instead of the file size."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")

    def read(offset: int, n: int) -> bytes:
        check_deadline()  # every byte is read, holes too: stop once the job is given up on
        return os.pread(fd, n, offset)

    if virtual:
        messages, size = mboxfrom.virtual_sizes(read, st.st_size, _CHUNK)
    else:
        messages, size = mboxfrom.count_messages(read, st.st_size, _CHUNK), st.st_size
    return size, messages, stamp_of(st)


def is_mbox(fd: int) -> bool:
    """Whether the file open at ``fd`` is an mbox: empty, or starting with a ``From `` line.

    Anything else in an mbox home (Sieve scripts, ``.forward``, an IMAP server's index files, a
    single message) is not a folder of mail, and counting it would charge its size to the user.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    return st.st_size == 0 or os.pread(fd, len(_FROM), 0) == _FROM


_MMDF = b"\x01\x01\x01\x01\n"


def is_mmdf(fd: int) -> bool:
    """Whether the regular file open at ``fd`` starts as an MMDF folder does (mutt's
    ``mbox_type=MMDF``, Exim's appendfile with ``message_prefix = \\1\\1\\1\\1\\n``): mail,
    though not an mbox."""
    return os.pread(fd, len(_MMDF), 0) == _MMDF


def read_file_folder(
    fd: int, name: str, racy_cutoff_ns: int, profile: Profile = FILES
) -> tuple[FolderUsage, MboxStamp]:
    """One mbox file as a folder, split into messages by the profile's mbox rule; with the
    file's stamp as read (kept or not): a later change shows against it."""
    if profile.mbox is MboxRule.DOVECOT:
        size, messages, file_stamp = count_dovecot(fd, virtual=profile.size is SizeRule.VIRTUAL)
    else:
        size, messages, file_stamp = count_messages(fd)
    # Racy by the ctime, as stamped (an mtime set back says nothing).
    kept = None if file_stamp[0] >= racy_cutoff_ns else (*file_stamp, *profile.stamp_tag)
    return FolderUsage(name, size, messages, kept), file_stamp


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES)


INDEX_DIR = ".imap"  # Dovecot's index of an mbox home (mail_location without INDEX=): no mail


def _passed_over(dir_fd: int, entry: os.DirEntry[str]) -> bool:
    """Whether an entry of an mbox home is no mail: Dovecot's index directory, a dot file or
    ``*.lck`` but one starting with a From line, a lock file. A directory whose name starts with
    a dot is an IMAP folder all the same (``.Archive/2024``: a Sieve fileinto makes one, and
    Dovecot counts it)."""
    if entry.name == INDEX_DIR:
        return True
    if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
        return False
    return _skipped(entry.name) and not _named_off_but_mbox(dir_fd, entry)


def _named_off_but_mbox(dir_fd: int, entry: os.DirEntry[str]) -> bool:
    """Whether a file whose name says it is no mail (a dot file, ``*.lck``) starts with a From line
    all the same: Dovecot lists and counts an mbox folder ``.stash`` or ``Archive.lck`` (its own
    lock files end in ``.lock``)."""
    return (
        not entry.name.endswith(".lock")
        and entry.is_file(follow_symlinks=False)
        and file_is_mbox(dir_fd, entry.name, empty=False, strict=True)
    )


def holds_maildir(fd: int) -> bool:
    """Whether the directory is a Maildir: cur/, new/ or tmp/ in it, no other directory beside
    them (but dot ones: Maildir++ folders), and no mbox file (see :func:`holds_mbox`). Dovecot
    keeps the IMAP folders "Projects/new/2024", "Projects/cur/a" and "Projects/2024/jan" as the
    mbox files ``Projects/new/2024``, ``Projects/cur/a`` and ``Projects/2024/jan``: cur/ and new/
    both, in a folder directory."""
    found = [name for name in _MAILDIR_DIRS if _is_dir(fd, name)]
    if not found:
        return False
    with os.scandir(fd) as entries:
        others = any(
            e.is_dir(follow_symlinks=False) and e.name not in _MAILDIR_DIRS and not e.name.startswith(".")
            for e in entries
        )
    return not others and not holds_mbox(fd, found)


def _is_dir(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


_MAILDIR_NAME = re.compile(r"[0-9]+\.")  # how every delivery agent names a Maildir message: its time first


def holds_mbox(fd: int, subdirs: Iterable[str] = ("cur", "new")) -> bool:
    """Whether the directory open at ``fd`` holds an mbox file: one directly in it, or the first
    file in one of its ``subdirs`` (each named so by a user of an mbox home, not a Maildir's:
    a Maildir's messages never start with a ``From `` line). Only cur/ and new/ at the top of
    a directory make it look like a Maildir; this tells such a folder directory from one.

    A file that cannot be opened (its owner's lease, EACCES on a root-squashed mount) is an
    OSError, not a "no": taken for none, the folder directory holding it would be passed over as
    a Maildir, its mail left out."""
    with os.scandir(fd) as entries:
        # Any file but Dovecot's own locks: a dot file (.stash) may be an mbox folder too.
        names = [e.name for e in entries if not e.name.endswith(".lock") and e.is_file(follow_symlinks=False)]
    if any(file_is_mbox(fd, name, empty=False, strict=True) for name in names):
        return True
    for sub in subdirs:
        with safefs.dir_opened(sub, fd) as sub_fd:
            if sub_fd is None:
                continue
            with os.scandir(sub_fd) as entries:
                first = next((e.name for e in entries if e.is_file(follow_symlinks=False)), None)
            # A message saved with its envelope line (procmail's, Exim's with a message_prefix)
            # starts as an mbox does: its Maildir name (time, then a dot) tells it apart.
            if first is None or _MAILDIR_NAME.match(first):
                continue
            if file_is_mbox(sub_fd, first, empty=False, strict=True):
                return True
    return False


def file_is_mbox(dir_fd: int, relative: str, empty: bool = True, strict: bool = False) -> bool:
    """Whether the file at ``relative`` beneath ``dir_fd`` is a regular mbox file (see
    :func:`is_mbox`; with ``empty`` False an empty file is none: it proves nothing), opened
    following nothing; False when it is gone or (unless ``strict``: then an OSError, what it
    holds not known, as under its owner's lease) cannot be opened."""
    try:
        fd = open_file(dir_fd, relative)
    except OSError:
        if strict:
            raise
        return False
    if fd is None:
        return False
    try:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and (st.st_size > 0 or empty) and is_mbox(fd)
    finally:
        os.close(fd)


class Listing(NamedTuple):
    """The files of an mbox home that may be mbox folders, and the directories passed over."""

    files: list[str]
    maildirs: list[str]


MAX_DEPTH = 64
"""Directories an mbox home is walked into at most: Dovecot's folders go a few levels deep."""
MAX_ENTRIES = 10_000
"""Files and directories an mbox home may hold (as a Maildir tree may hold folders)."""
MAX_NAMES = 2_000_000
"""Characters of the paths below an mbox home, in all: 10,000 of 200 characters."""
_TOO_MANY = f"more than {MAX_ENTRIES} files and folders, or names of more than {MAX_NAMES} characters in all"
_MAILDIR_OR_FOLDERS = (
    "a Maildir in an mbox home, or IMAP folders named cur or new: which the delivery agent counts,"
    " quotagate cannot tell"
)


def mbox_files(root_fd: int, beside: str = "") -> Listing:
    """The relative path (the folder name) of every file under an opened directory that may be
    an mbox (see :func:`is_mbox`), without following symlinks.

    Dovecot's index directory ``.imap``, dot files (``.subscriptions``, ``.forward``) and lock
    files are not mail; other dot directories are folders (see :func:`_passed_over`). Nor is a
    Maildir (``cur/``, ``new/`` or ``tmp/``, no mbox file): its files are the messages of a
    Maildir, never mbox folders; it is listed in ``maildirs`` (with a trailing ``/``). One
    whose cur/, new/ or tmp/ holds a directory, or a file starting with a From line, may as well be
    IMAP folders named so (``Archive/cur/2024.q1``), whose mail the delivery agent counts: an
    OSError (EINVAL), the mailbox unknown; but for ``beside`` at the top (``[spool]
    maildir_subdir``, the Maildir measured beside the mbox files, procmail's From lines and all).

    Depth first, holding a descriptor for each level of the current path only: a home as wide
    as its owner likes never holds more. Deeper than :data:`MAX_DEPTH` is an OSError (ELOOP);
    more than :data:`MAX_ENTRIES` files and directories, or names longer than
    :data:`MAX_NAMES` characters in all (paths below the home), one too (E2BIG): empty files
    cost their owner no disk, and each would be a folder of the reading, in memory and in the store.
    """
    found: list[str] = []
    maildirs: list[str] = []
    entries_left, names_left = MAX_ENTRIES, MAX_NAMES

    def walk(fd: int, prefix: str, depth: int) -> None:
        nonlocal entries_left, names_left
        if depth > MAX_DEPTH:
            raise OSError(errno.ELOOP, f"folders nested deeper than {MAX_DEPTH} levels", prefix)
        check_deadline()
        subdirs = []
        with os.scandir(fd) as entries:
            for entry in entries:
                # Counted before it is looked at: telling a dot file from an mbox opens it, and
                # empty dot files cost their owner nothing.
                entries_left -= 1
                names_left -= len(prefix) + len(entry.name)
                if entries_left < 0 or names_left < 0:
                    raise OSError(errno.E2BIG, _TOO_MANY, prefix or ".")
                if _passed_over(fd, entry):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    found.append(prefix + entry.name)
        for name in subdirs:
            sub = safefs.open_dir(name, fd)
            if sub is None:
                continue  # gone, or swapped for a symlink, since the listing
            try:
                if holds_maildir(sub):
                    if prefix or name != beside:
                        look_into(sub, prefix + name)
                    maildirs.append(prefix + name + "/")
                else:
                    walk(sub, prefix + name + "/", depth + 1)
            finally:
                os.close(sub)

    def look_into(maildir_fd: int, where: str) -> None:
        """Every entry of a Maildir's cur/, new/ and tmp/ (counted against the bounds): a message,
        or (a directory, a file starting with a From line) maybe an mbox folder."""
        nonlocal entries_left
        for part in _MAILDIR_DIRS:
            with safefs.dir_opened(part, maildir_fd) as sub:
                if sub is None:
                    continue
                with os.scandir(sub) as entries:
                    for entry in entries:
                        entries_left -= 1
                        if entries_left < 0:
                            raise OSError(errno.E2BIG, _TOO_MANY, where)
                        folder_like = not entry.is_file(follow_symlinks=False)
                        if folder_like or file_is_mbox(sub, entry.name, empty=False, strict=True):
                            raise OSError(errno.EINVAL, _MAILDIR_OR_FOLDERS, f"{where}/{part}/{entry.name}")

    walk(root_fd, "", 0)
    return Listing(sorted(found), sorted(maildirs))


def open_file(root_fd: int, relative: str) -> int | None:
    """Open the mbox file at ``relative`` (a name from :func:`mbox_files`) beneath ``root_fd``,
    one directory at a time, following nothing; None when it is gone."""
    folder, _, name = relative.rpartition("/")
    fd = safefs.open_below(root_fd, folder) if folder else os.dup(root_fd)
    if fd is None:
        return None
    try:
        return os.open(name, safefs.FILE, dir_fd=fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def file_stamp(root_fd: int, relative: str) -> MboxStamp | None:
    """:func:`stamp_of` an mbox file beneath ``root_fd``, None when it is gone."""
    fd = open_file(root_fd, relative)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return stamp_of(st)
