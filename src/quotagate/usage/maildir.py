"""Reading Maildir and Maildir++ folders: ``cur/`` and ``new/`` only, never ``tmp/``."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable
from typing import Literal, NamedTuple

from quotagate.accounting import FILES, Profile, SizeRule, virtual_size
from quotagate.model import FolderUsage
from quotagate.usage import safefs
from quotagate.usage.extents import data_chunks
from quotagate.usage.names import display_name, size_from_name, unique_part

log = logging.getLogger(__name__)

INBOX = "INBOX"
_RETRIES = 3
_MISSING = -1

Stamp = tuple[int, int, int, int]  # ctimes of cur/ and new/, then their inode numbers
Layout = Literal["maildir++", "fs"]  # [spool] maildir_layout: Dovecot's default, or its LAYOUT=fs

# A LAYOUT=fs tree is walked at most this deep and this wide: past them a user's directories
# would cost a scan without bound. What is left out is reported, never silently dropped.
MAX_DEPTH = 64
MAX_FOLDERS = 10_000
_NOT_FOLDERS = frozenset({"cur", "new", "tmp"})
# The problem of a Maildir read as Maildir++ whose plain sub-directories hold cur/ or new/.
LAYOUT_HINT = (
    "sub-directories holding cur/ or new/ not counted (Dovecot LAYOUT=fs folders, or its INBOX=?"
    ' set [spool] maildir_layout = "fs"; a Maildir one level down: [spool] maildir_subdir)'
)


def folder_path(root: str, name: str, layout: Layout = "maildir++") -> str:
    """Where a folder lives: the root for INBOX, else ``root/.Name`` (Maildir++) or ``root/Name``
    (``LAYOUT=fs``, whose names hold "/" between levels)."""
    if name == INBOX:
        return root
    return f"{root}/{name}" if layout == "fs" else f"{root}/.{name}"


class Folders(NamedTuple):
    """The folders of a Maildir by their names on disk, and what was found but not counted;
    ``unreadable`` says why mail the tree holds cannot be counted as it is laid out (the
    mailbox is then unknown: counting the rest would say it holds less than it does)."""

    names: list[str]
    problems: list[str]
    unreadable: str | None = None


# A directory folder named INBOX beside the root's own: Dovecot's INBOX= setting puts INBOX
# there (the root is then not INBOX at all), which quotagate cannot tell from its listing.
INBOX_DIR = (
    "a folder directory named INBOX beside the root's own (Dovecot's INBOX= setting?), which quotagate cannot read"
)


def folder_names(root_fd: int, layout: Layout = "maildir++") -> Folders:
    """INBOX and every folder of the opened root: Maildir++ ``.Sent``, ``.Archive.2024``, or
    ``LAYOUT=fs`` ``Sent``, ``Archive/2024``. Nothing is followed; what is left out that may
    hold mail (symlinks, folders past the bounds, ``LAYOUT=fs`` folders read as Maildir++) is
    named in ``problems``."""
    return _fs_folders(root_fd) if layout == "fs" else _maildirpp_folders(root_fd)


def _maildirpp_folders(root_fd: int) -> Folders:
    """The root's ``.Name`` folders, at most :data:`MAX_FOLDERS` of them. A plain sub-directory
    holding cur/ or new/ (a ``LAYOUT=fs`` folder, or Dovecot's INBOX put there by ``INBOX=``)
    holds mail quotagate does not count: the mailbox is unreadable, as is one with a ``.INBOX``
    folder."""
    names, symlinks, plain = [INBOX], [], []
    too_many = False
    with os.scandir(root_fd) as entries:
        for entry in entries:
            n = entry.name
            if n.startswith("."):
                if n in (".", ".."):
                    continue
                if entry.is_symlink():
                    symlinks.append(n)
                elif entry.is_dir(follow_symlinks=False):
                    if len(names) >= MAX_FOLDERS:
                        too_many = True
                        break
                    names.append(n[1:])
            elif n not in _NOT_FOLDERS and entry.is_dir(follow_symlinks=False) and holds_mail_dirs(root_fd, n):
                plain.append(n)
    problems = _symlink_problem(symlinks) + (
        [f"more than {MAX_FOLDERS} folders: the rest not counted"] if too_many else []
    )
    unreadable = INBOX_DIR if _inbox_dir(root_fd, ("." + n for n in names[1:])) else None
    unreadable = unreadable or (f"{LAYOUT_HINT}: {some(plain)}" if plain else None)
    return Folders(names, problems, unreadable)


def _inbox_dir(root_fd: int, dirs: Iterable[str]) -> bool:
    """Whether one of the folder directories ``dirs`` of the root may be Dovecot's INBOX put
    there by ``INBOX=``: named INBOX in any case, without the ``maildirfolder`` file Dovecot and
    Courier write in every folder they make (a user's folder "Inbox" has one). One named
    INBOX exactly always may: counted as a folder, its name would be the root's."""
    for name in dirs:
        bare = name.removeprefix(".")
        if bare == INBOX:
            return True
        if bare.upper() != INBOX:
            continue
        fd = safefs.open_dir(name, root_fd)
        if fd is None:
            continue
        try:
            if entry_type(fd, "maildirfolder") != stat.S_IFREG:
                return True
        finally:
            os.close(fd)
    return False


def holds_mail_dirs(dir_fd: int, name: str) -> bool:
    """Whether the directory ``name`` holds a cur/ or new/ (a ``LAYOUT=fs`` folder): opened
    without following a symlink and looked into by its descriptor (``name/cur`` by path would
    follow ``name`` if its owner swapped it for a symlink meanwhile)."""
    fd = safefs.open_dir(name, dir_fd)
    if fd is None:
        return False
    try:
        return any(is_mail_dir(fd, sub) for sub in ("cur", "new"))
    finally:
        os.close(fd)


def is_mail_dir(dir_fd: int, name: str) -> bool:
    """Whether the entry ``name`` (cur or new) stands for a Maildir's: a directory, or a symlink
    (not followed: its mail is left out, and said). A file of that name is no such thing: an
    mbox home's IMAP folders named cur and new are files (Dovecot's)."""
    return entry_type(dir_fd, name) in (stat.S_IFDIR, stat.S_IFLNK)


def entry_type(dir_fd: int, name: str) -> int | None:
    """The file type bits of an entry, not following it; None when it is missing."""
    try:
        return stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def _fs_folders(root_fd: int) -> Folders:
    """Walk the sub-directories depth first through descriptors, skipping cur/, new/ and tmp/ at
    each level, at most :data:`MAX_DEPTH` levels and :data:`MAX_FOLDERS` folders. A directory
    whose name starts with a dot is a folder too: Dovecot keeps an IMAP folder ".stash" so, and
    lists and counts it."""
    names, symlinks, problems = [INBOX], [], []
    too_deep: list[str] = []
    seen = 1

    def walk(fd: int, prefix: str, depth: int) -> bool:
        nonlocal seen
        with os.scandir(fd) as listing:
            entries = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in listing)
        for n, is_link, is_dir in entries:
            if n in (".", "..") or n in _NOT_FOLDERS or not (is_link or is_dir):
                continue
            name = f"{prefix}{n}"
            if is_link:
                symlinks.append(name)
                continue
            if depth >= MAX_DEPTH:
                too_deep.append(name)
                continue
            if seen >= MAX_FOLDERS:
                return False
            sub = safefs.open_dir(n, fd)
            if sub is None:
                continue  # removed, or swapped for a symlink, while we looked
            seen += 1
            try:
                if any(is_mail_dir(sub, d) for d in ("cur", "new")):
                    names.append(name)
                if not walk(sub, f"{name}/", depth + 1):
                    return False
            finally:
                os.close(sub)
        return True

    if not walk(root_fd, "", 0):
        problems.append(f"more than {MAX_FOLDERS} folders: the rest not counted")
    if too_deep:
        problems.append(f"folders deeper than {MAX_DEPTH} levels not counted: {some(too_deep)}")
    return Folders(names, _symlink_problem(symlinks) + problems, INBOX_DIR if _inbox_dir(root_fd, names[1:]) else None)


def _symlink_problem(names: list[str]) -> list[str]:
    if not names:
        return []
    return [f"symlinks not followed, what they lead to is not counted: {some(names)}"]


def some(names: list[str], most: int = 5) -> str:
    """Up to ``most`` names (undecodable bytes as ``\\xNN``), and how many more. Control
    characters are left for what shows the text to escape (the report, ``check``, the log): a
    reason is stored as it is, and ``report --format json`` gives it exactly."""
    shown = ", ".join(display_name(n) for n in sorted(names)[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def symlinked_mail_dirs(seen: Look, name: str, layout: Layout = "maildir++") -> list[str]:
    """The folder's cur/ and new/ that ``seen`` found to be symlinks (never followed), by their
    path in the Maildir."""
    base = "" if name == INBOX else f"{name}/" if layout == "fs" else f".{name}/"
    return [f"{base}{sub}" for sub in seen.symlinks]


def open_folder(root_fd: int, name: str, layout: Layout = "maildir++", flags: int = safefs.DIRECTORY) -> int | None:
    """A descriptor for the folder (a new one for INBOX too), opened with ``flags`` (see
    :func:`safefs.open_dir`); None when it is gone or a symlink.

    A ``LAYOUT=fs`` folder is reached one level at a time: a symlink at any level ends the walk.
    """
    if name == INBOX:
        return os.dup(root_fd)
    if layout != "fs":
        return safefs.open_dir(f".{name}", root_fd, flags)
    return safefs.open_below(root_fd, name, flags)


class Look(NamedTuple):
    """What one ``lstat`` of each of a folder's ``cur/`` and ``new/`` shows: their stamp, and
    which of them are symlinks (never followed, their mail not counted)."""

    stamp: Stamp
    symlinks: tuple[str, ...]


def changed_ns(st: os.stat_result) -> int:
    """When an inode last changed, as a stamp: its ctime. Every change of a directory's entries
    (or of a file's content) moves it, like the mtime; unlike the mtime, the owner cannot set it
    back (``touch -d`` sets the ctime to now), so mail added behind an mtime set back is seen."""
    return st.st_ctime_ns


def _stamp_of(cur: os.stat_result | None, new: os.stat_result | None) -> Stamp:
    """The ctimes of cur/ and new/ and which directories they are: ctimes come from a coarse
    clock, so two folders' can be equal, and a folder renamed over another would pass for it."""
    cur_dir, new_dir = (st if st is not None and stat.S_ISDIR(st.st_mode) else None for st in (cur, new))
    return (
        _MISSING if cur_dir is None else changed_ns(cur_dir),
        _MISSING if new_dir is None else changed_ns(new_dir),
        0 if cur_dir is None else cur_dir.st_ino,
        0 if new_dir is None else new_dir.st_ino,
    )


def changed_at(stamp: Stamp) -> int:
    """When a folder's cur/ or new/ last changed, by its stamp."""
    return max(stamp[0], stamp[1])


def _lstat(folder_fd: int, sub: str) -> os.stat_result | None:
    try:
        return os.stat(sub, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def look(folder_fd: int) -> Look:
    """:func:`stamp` and the symlinked ``cur/`` or ``new/`` of a folder, from the same two ``lstat``s."""
    cur, new = _lstat(folder_fd, "cur"), _lstat(folder_fd, "new")
    links = tuple(sub for sub, st in (("cur", cur), ("new", new)) if st is not None and stat.S_ISLNK(st.st_mode))
    return Look(_stamp_of(cur, new), links)


def stamp(folder_fd: int) -> Stamp:
    """The ctimes of a folder's ``cur/`` and ``new/`` (-1 when missing, or not a directory)
    and their inode numbers: unchanged means unchanged mail (see :func:`changed_ns`).
    :func:`look`'s stamp, without its symlinks: an unchanged scan asks this of every folder."""
    return _stamp_of(_lstat(folder_fd, "cur"), _lstat(folder_fd, "new"))


def folder_stamp(root_fd: int, name: str, layout: Layout = "maildir++") -> Stamp | None:
    """:func:`stamp` of a folder by name; None when the folder is gone."""
    if name == INBOX:  # the root itself: no descriptor of its own to open
        return stamp(root_fd)
    fd = open_folder(root_fd, name, layout, safefs.LOOK)
    if fd is None:
        return None
    try:
        return stamp(fd)
    finally:
        os.close(fd)


# The fast path reads every size of a directory with one regex over its names joined by "/" (which
# no file name holds), so the per-file work runs in the regex engine, not in a Python loop. It is
# taken only when it must agree with the per-name rules of ``size_from_name``: no dot files, each
# name with ",S=" holding exactly one well-formed size, none of them after the ":" info.
_SIZE = re.compile(r",S=([0-9]{1,18})(?=[,:/])")  # ASCII digits only, as names.size_from_name
_SIZE_IN_INFO = re.compile(r":[^/]*,S=")


def _regular_files(folder_fd: int, sub: str, profile: Profile = FILES) -> tuple[int, list[str]] | None:
    """An open fd for ``cur`` or ``new`` and the names of the regular files in it (and of the
    symlinks, or of every entry, under a profile that counts them); None when there is no such
    directory. A symlink is never followed: a self-loop must not turn the mailbox unknown."""
    fd = safefs.open_dir(sub, folder_fd)
    if fd is None:
        return None
    try:
        with os.scandir(fd) as entries:
            if profile.any_entry:
                return fd, [e.name for e in entries]
            if profile.symlinks:
                return fd, [e.name for e in entries if e.is_file(follow_symlinks=False) or e.is_symlink()]
            return fd, [e.name for e in entries if e.is_file(follow_symlinks=False)]
    except BaseException:
        os.close(fd)
        raise


def _measure_names(fd: int, names: list[str]) -> tuple[int, int, list[str]]:
    """Bytes and messages of message files (the size from the name, else one ``lstat``), and the
    names that vanished before they could be measured."""
    text = "/".join(names) + "/"
    unsized = [n for n in names if ",S=" not in n]
    sizes = _SIZE.findall(text)
    fast = (
        len(sizes) == len(names) - len(unsized) == text.count(",S=")
        and not text.startswith(".")
        and "/." not in text
        and not _SIZE_IN_INFO.search(text)
    )
    if fast:
        total, count = sum(map(int, sizes)), len(sizes)
    else:
        total = count = 0
        unsized = []
        for name in names:
            if name[0] == ".":
                continue
            size = size_from_name(name)
            if size is None:
                unsized.append(name)
            else:
                total += size
                count += 1
    vanished = []
    for name in unsized:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:  # deleted or moved since listed
            vanished.append(name)
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
            count += 1
    return total, count, vanished


_GONE = -1
_VSIZE_CHUNK = 1 << 16


def _virtual_size(dir_fd: int, name: str, seen: os.stat_result) -> int:
    """Dovecot's virtual size of a message file (bare LFs as CRLF), read through a descriptor
    opened without following anything and checked to be the file that was looked at; only its
    data is read (see :mod:`quotagate.usage.extents`)."""
    fd = os.open(name, safefs.FILE, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(name)
        lf = crlf = after = 0
        last = b""
        for offset, chunk in data_chunks(fd, st.st_size, _VSIZE_CHUNK):
            if offset != after:
                last = b"\0"  # a hole came between: a CR before it pairs with no LF after it
            lf += chunk.count(b"\n")
            crlf += chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n")
            last = chunk[-1:]
            after = offset + len(chunk)
        return virtual_size(st.st_size, lf, crlf)
    finally:
        os.close(fd)


def _file_size(fd: int, name: str, profile: Profile) -> int | None:
    """What an entry the name does not size is worth under ``profile`` (see its ``any_entry``,
    ``directory_bytes``, ``symlinks``, ``share_hard_links``): None when it does not count at
    all, ``_GONE`` when it vanished. Nothing is followed."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            if profile.size is SizeRule.VIRTUAL:
                return _virtual_size(fd, name, st)
            return st.st_size // max(st.st_nlink, 1) if profile.share_hard_links else st.st_size
    except FileNotFoundError:  # deleted or moved since listed
        return _GONE
    if stat.S_ISDIR(st.st_mode) and profile.any_entry:
        return st.st_size if profile.directory_bytes else 0
    if profile.any_entry or (stat.S_ISLNK(st.st_mode) and profile.symlinks):
        return 0
    return None


def _measure_profile(fd: int, names: list[str], profile: Profile) -> tuple[int, int, list[str]]:
    """:func:`_measure_names` under an accounting profile: its size rule, what it leaves out."""
    total = count = 0
    vanished = []
    for name in names:
        if profile.left_out(name):
            continue
        size = profile.size_from_name(name)
        if size is None:
            size = _file_size(fd, name, profile)
            if size == _GONE:
                vanished.append(name)
                continue
            if size is None:
                continue
        total += size
        count += 1
    return total, count, vanished


_INFO = re.compile(r":[^/]*")


def _unique_parts(names: list[str]) -> list[str]:
    """:func:`unique_part` of each name, computed in C over the names joined by "/"."""
    return _INFO.sub("", "/".join(names)).split("/") if names else []


def _without(names: list[str], skip: frozenset[str] | set[str]) -> list[str]:
    """``names`` less those whose unique part is in ``skip``.

    A move from new/ to cur/ during a read is rare: find out whether any name is to be skipped
    with C-level work (a set intersection), and filter name by name only when one is.
    """
    found = skip.intersection(_unique_parts(names))
    if not found:
        return names
    return [n for n in names if unique_part(n) not in found]


def _read_dir(
    folder_fd: int, sub: str, skip: frozenset[str] | set[str], collect: bool, profile: Profile = FILES
) -> tuple[int, int, set[str], list[str]]:
    """Bytes and messages of the message files in one of cur/ or new/, (when ``collect``) the
    unique names of those counted, and the names skipped.

    Names whose unique part is in ``skip`` were counted already, if they moved from new/ to
    cur/ while we read (see :func:`_twins`).
    """
    listed = _regular_files(folder_fd, sub, profile)
    if listed is None:
        return 0, 0, set(), []
    fd, names = listed
    skipped: list[str] = []
    try:
        if skip:
            kept = _without(names, skip)
            if len(kept) < len(names):
                chosen = set(kept)
                skipped = [n for n in names if n not in chosen]
            names = kept
        total, count, vanished = _measure(fd, names, profile)
    finally:
        os.close(fd)
    if not collect:
        return total, count, set(), skipped
    counted = set(_unique_parts([n for n in names if n[0] != "."]))
    return total, count, counted.difference(_unique_parts(vanished)), skipped


def _measure(fd: int, names: list[str], profile: Profile) -> tuple[int, int, list[str]]:
    if profile is FILES:
        return _measure_names(fd, names)
    return _measure_profile(fd, names, profile)


def _twins(folder_fd: int, skipped: list[str], profile: Profile) -> tuple[int, int]:
    """Bytes and messages of the cur/ files skipped for a unique name new/ held, that new/
    still holds once cur/ was read, as another file: not a message that moved meanwhile
    (counted once, in new/), nor one left linked in both by a crash between link and unlink
    (one inode: counted once), but two files, each counted by the delivery agent. (Skipped, a
    1-byte stub in new/ named like a message in cur/ hid that message from the count.)"""
    listed = _regular_files(folder_fd, "new", profile)
    if listed is None:
        return 0, 0
    new, names = listed
    try:
        in_new = dict(zip(_unique_parts(names), names, strict=True))
        cur = safefs.open_dir("cur", folder_fd)
        if cur is None:
            return 0, 0
        try:
            twins = [n for n in skipped if _two_files(new, in_new.get(unique_part(n)), cur, n)]
            total, count, _ = _measure(cur, twins, profile)
        finally:
            os.close(cur)
    finally:
        os.close(new)
    return total, count


def _two_files(new: int, in_new: str | None, cur: int, in_cur: str) -> bool:
    """Whether new/``in_new`` and cur/``in_cur`` are two files (not one linked twice)."""
    if in_new is None:
        return False
    try:
        a = os.stat(in_new, dir_fd=new, follow_symlinks=False)
        b = os.stat(in_cur, dir_fd=cur, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)


def read_folder(
    folder_fd: int, name: str, racy_cutoff_ns: int, profile: Profile = FILES, before: Stamp | None = None
) -> tuple[FolderUsage, Stamp]:
    """Measure one folder as ``profile`` counts it; re-read it if ``cur/`` or ``new/`` changed
    while it was read. A kept stamp ends with the profile's stamp tag. With the usage, the
    folder's stamp as read (kept or not): a later change shows against it.

    ``new/`` is read before ``cur/`` and messages are matched by their unique name, so mail
    moving from new/ to cur/ meanwhile is counted exactly once. A stamp newer than
    ``racy_cutoff_ns`` is not kept, so the next incremental scan reads the folder again.
    ``before``: the folder's :func:`stamp` the caller has just taken (else it is taken here).
    """
    if before is None:
        before = stamp(folder_fd)
    for _attempt in range(_RETRIES):
        new_bytes, new_count, new_names, _ = _read_dir(folder_fd, "new", frozenset(), collect=True, profile=profile)
        cur_bytes, cur_count, _, skipped = _read_dir(folder_fd, "cur", new_names, collect=False, profile=profile)
        if skipped:
            twin_bytes, twin_count = _twins(folder_fd, skipped, profile)
            cur_bytes, cur_count = cur_bytes + twin_bytes, cur_count + twin_count
        seen = look(folder_fd)
        if seen.stamp == before:
            break
        before = seen.stamp
    else:
        log.info("folder %s kept changing while read; using the last reading", name)
    # Racy by the ctimes, as stamped: an mtime its owner set back says nothing about when the
    # folder last changed.
    kept = None if changed_at(seen.stamp) >= racy_cutoff_ns else (*seen.stamp, *profile.stamp_tag)
    return FolderUsage(name, new_bytes + cur_bytes, new_count + cur_count, kept), seen.stamp
