"""Reaching mailboxes in a spool its users control, without following anything they could redirect.

quotagate runs as root over directories mail users own. A path string is only a request: a user
can swap any component they own for a symlink (or rename a directory) between two system calls.
So every spool access here walks from an allowed root down, one component at a time, through
directory descriptors opened ``O_NOFOLLOW``; a symlink on the way is resolved by hand and followed
only when its target stays beneath an allowed root (``[spool] root`` or ``[spool] extra_roots``),
and the walk then starts again from that root. Files are opened ``O_NOFOLLOW | O_NONBLOCK`` (a
FIFO never blocks an open) and ``fstat``-checked to be the entry that was looked at.

The roots themselves are the admin's: they are opened normally, following symlinks.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory only walked through or looked at (fstat, and stat or open of its entries), never
# listed: O_PATH opens it without the cost of opening it for reading. A symlink still fails
# (ENOTDIR, with O_DIRECTORY and O_NOFOLLOW).
LOOK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_LINKS = 8  # symlinks resolved on the way to one mailbox before giving up (ELOOP)
KEPT_MAX = 128  # directories a walk keeps open for the next (see open_node): a deep tree holds no more


class Escape(OSError):
    """A path that leads outside every allowed root."""


@dataclass(frozen=True)
class Roots:
    """The directories mailboxes may live beneath, as normalised absolute paths.

    Each root is listed as configured and as its real path, so that an absolute symlink into
    the real location of a symlinked spool (``/var/mail`` -> ``/srv/mail``) is recognised.
    """

    paths: tuple[str, ...]

    @classmethod
    def of(cls, *roots: str | os.PathLike[str], extra: Iterable[str | os.PathLike[str]] = ()) -> Roots:
        found: list[str] = []
        for root in (*roots, *extra):
            for form in (os.path.normpath(os.path.abspath(root)), os.path.realpath(root)):
                if form not in found:
                    found.append(form)
        return cls(tuple(found))

    @cached_property
    def _prefixes(self) -> tuple[tuple[str, str], ...]:
        """Each root with the prefix of the paths beneath it, the longest root first."""
        return tuple(sorted(((root, root.rstrip("/") + "/") for root in self.paths), key=lambda r: -len(r[0])))

    def split(self, path: str) -> tuple[str, list[str]]:
        """The root ``path`` lies strictly beneath (the longest that fits), and the components
        below it. Raises :class:`Escape` for a path outside every root, or a root itself."""
        for root, prefix in self._prefixes:
            if path.startswith(prefix) and path != root:
                return root, [part for part in path[len(prefix) :].split("/") if part]
        raise Escape(errno.EXDEV, "outside the spool root (see [spool] root and extra_roots)", path)


@dataclass
class Node:
    """An opened mailbox root: a directory or a regular file, with its ``fstat``, the path it was
    reached by once symlinks were resolved, and whether a symlink below the root that root does
    not own was followed on the way (one a user may have made to reach into another user's
    mailbox; the admin's, such as a domain on a volume of its own, are root's)."""

    fd: int
    st: os.stat_result
    path: str
    followed: bool = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _check_name(path: str) -> None:
    if "\0" in path:
        raise OSError(errno.EINVAL, "path holds a NUL byte", path.replace("\0", "\\0"))


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_node(
    path: str, roots: Roots, kept: dict[str, int] | None = None, require_parent: bool = False, look: bool = False
) -> Node | None:
    """Open the directory or regular file at ``path`` beneath ``roots``; None when it does not
    exist (at any component: a mailbox not created yet). With ``require_parent``, None only when
    the last component is missing: a missing directory above it raises FileNotFoundError naming
    it (the caller knew the mailbox there: an unmounted volume must not pass for an empty one).

    ``kept`` (a directory's path -> its descriptor, the caller's to close) keeps the directories
    walked through on the way (up to :data:`KEPT_MAX`), and the next walk beneath one of them
    starts there: an unchanged scan reaches 2,000 mailboxes in four domains through the same
    few. Only for a look that compares stamps: a directory moved away since it was kept (its
    owner's doing, even out of the roots) is the mailbox as it was a moment ago, as a walk that
    lost a race with the move would have seen it, never a way into another one's files; the
    caller drops what it keeps after a batch of mailboxes.

    ``look``: directories are opened :data:`LOOK` (the node's too, then never to be listed).

    Raises :class:`Escape` when ``path`` or a symlink on the way leads outside the roots, and
    OSError for anything else (ELOOP after :data:`MAX_LINKS` symlinks, a FIFO or device at the
    end, a component that is not a directory, permissions).
    """
    _check_name(path)
    logical = os.path.normpath(os.path.abspath(path))
    owners: set[int] = set()  # of the users' symlinks followed on the way
    for _ in range(MAX_LINKS + 1):
        root, parts = roots.split(logical)
        found = _walk(logical, root, parts, kept, require_parent, LOOK if look else DIRECTORY)
        if isinstance(found, _Link):
            if found.owner is not None:
                owners.add(found.owner)
            logical = found.path
        elif isinstance(found, str):  # an entry swapped meanwhile: walked again as it was
            logical = found
        else:
            if found is not None and owners:
                found.followed = True
                if owners != {found.st.st_uid}:
                    found.close()
                    raise OSError(errno.EPERM, _ANOTHERS, path)
            return found
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


# A user's symlink is followed only to what that user owns, as the kernel's protected_symlinks
# has it in a sticky directory: otherwise its owner would have root read, for them, a mailbox
# they cannot read (its folders' names and sizes would reach them in a warning mail).
_ANOTHERS = "reached through a user's symlink, to a directory or file that user does not own"


class _Link(NamedTuple):
    """A symlink resolved by hand: the path to walk instead, and the uid of the user who owns the
    link, who may point it at another's files; None for the admin's (root's: a domain on a
    volume of its own)."""

    path: str
    owner: int | None


def _walk(
    logical: str, root: str, parts: list[str], kept: dict[str, int] | None, require_parent: bool, directory: int
) -> Node | _Link | str | None:
    """One walk from ``root`` down ``parts`` to ``logical``: the node, None when missing, a
    symlink resolved by hand, or the path to walk again (an entry swapped since it was looked at).
    Directories are opened with the flags ``directory``."""
    here = root
    fd = kept.get(root, -1) if kept is not None else -1
    owned = fd < 0  # whether fd is this walk's to close (else it is kept)
    if owned:
        fd = os.open(root, (directory | os.O_DIRECTORY | os.O_CLOEXEC) & ~os.O_NOFOLLOW)  # the admin's
        if kept is not None and len(kept) < KEPT_MAX:
            kept[root], owned = fd, False
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not last and kept is not None:
                here = f"{here.rstrip('/')}/{part}"
                if (known := kept.get(here, -1)) >= 0:
                    if owned:
                        os.close(fd)
                    fd, owned = known, False
                    continue
            # The common case first: a plain directory, opened without a look (O_NOFOLLOW and
            # O_DIRECTORY let nothing else through); a symlink, a file or anything else is
            # looked at below.
            try:
                opened = os.open(part, directory, dir_fd=fd)
            except FileNotFoundError:
                if require_parent and not last:
                    raise missing_above(os.path.join(root, *parts[: i + 1])) from None
                return None
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
            else:
                if owned:
                    os.close(fd)
                fd, owned = opened, True
                if not last:
                    if kept is not None and len(kept) < KEPT_MAX:
                        kept[here], owned = fd, False
                    continue
                node = Node(opened, os.fstat(opened), logical)
                owned = False
                return node
            try:
                seen = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if require_parent and not last:
                    raise missing_above(os.path.join(root, *parts[: i + 1])) from None
                return None
            if stat.S_ISLNK(seen.st_mode):
                link = _read_link(part, fd)
                if link is None:  # gone, or no longer a symlink: look again
                    return logical
                target, owner = link
                return _Link(os.path.normpath(os.path.join(root, *parts[:i], target, *parts[i + 1 :])), owner)
            if not last:
                if stat.S_ISDIR(seen.st_mode):  # swapped back since the open: look again
                    return logical
                where = os.path.join(root, *parts[: i + 1])
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
            if stat.S_ISREG(seen.st_mode):
                flags = FILE
            elif stat.S_ISDIR(seen.st_mode):
                flags = directory
            else:
                raise OSError(errno.EINVAL, "neither a file nor a directory", logical)
            try:
                opened = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a symlink since the stat
                    return logical
                raise
            now = os.fstat(opened)
            if not _same(seen, now):  # swapped since the stat: look again
                os.close(opened)
                return logical
            return Node(opened, now, logical)
        raise AssertionError("a path beneath a root has a last component")
    finally:
        if owned:
            os.close(fd)


def _read_link(name: str, dir_fd: int) -> tuple[str, int | None] | None:
    """The target of the symlink ``name`` and the uid of the user who owns it, None when it is
    the admin's: root's, with no hard link of it elsewhere or none a user can have made (see
    :func:`_hardlinks_protected`; else it is no one's: -1). Both are read
    from one inode, opened without following it: a user who swaps names in a directory of
    theirs cannot pair root's owner with their own target. None when it is gone or no longer a
    symlink."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISLNK(st.st_mode):
            return None
        if st.st_uid == 0:
            return os.readlink("", dir_fd=fd), None if st.st_nlink == 1 or _hardlinks_protected() else -1
        return os.readlink("", dir_fd=fd), st.st_uid
    finally:
        os.close(fd)


@functools.cache
def _hardlinks_protected() -> bool:
    """Whether the kernel lets no user link a file they do not own (fs.protected_hardlinks, on by
    default): then root's symlink with a second name (a spool copied with ``cp -al``) is still
    root's doing; else a user may have linked it into their mailbox."""
    try:
        with open("/proc/sys/fs/protected_hardlinks", "rb") as sysctl:
            return sysctl.read().strip() == b"1"
    except OSError:
        return False


def missing_above(path: str) -> FileNotFoundError:
    """The error for a directory missing at ``path``, above a mailbox measured before."""
    return FileNotFoundError(errno.ENOENT, "missing above a mailbox measured before (an unmounted volume?)", path)


@contextmanager
def opened(
    path: str, roots: Roots, kept: dict[str, int] | None = None, require_parent: bool = False, look: bool = False
) -> Iterator[Node | None]:
    """:func:`open_node` as a context manager that closes the node."""
    node = open_node(path, roots, kept, require_parent, look)
    try:
        yield node
    finally:
        if node is not None:
            node.close()


def open_dir(name: str, dir_fd: int, flags: int = DIRECTORY) -> int | None:
    """A directory entry of ``dir_fd`` opened as a directory (``flags``: :data:`DIRECTORY`, or
    :data:`LOOK`), never through a symlink; None when it is missing, a symlink or not a
    directory (it is then not part of this mailbox)."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise


@contextmanager
def admins_directory(path: str | os.PathLike[str]) -> Iterator[int]:
    """A directory a config names (its path is the admin's, followed as written), as a handle
    (O_PATH) through which its entries are then reached by name, never by a path another user
    could change beneath it. Raises OSError (FileNotFoundError when it is missing)."""
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def dir_opened(name: str, dir_fd: int) -> Iterator[int | None]:
    """:func:`open_dir` as a context manager that closes the directory."""
    fd = open_dir(name, dir_fd)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def open_below(root_fd: int, relative: str, flags: int = DIRECTORY) -> int | None:
    """The directory at ``relative`` below an opened one, a level at a time (:func:`open_dir`,
    with ``flags``), following nothing; None when a level is gone, a symlink, or ``.``/``..``."""
    fd = os.dup(root_fd)
    for part in relative.split("/"):
        try:
            sub = open_dir(part, fd, flags) if part not in ("", ".", "..") else None
        finally:
            os.close(fd)  # a level that cannot be opened (EACCES, EMFILE) raises: no descriptor kept
        if sub is None:
            return None
        fd = sub
    return fd


def read_regular(name: str, dir_fd: int, limit: int, owner: int | None = None) -> bytes | None:
    """:func:`read_with_stat` without the stat."""
    found = read_with_stat(name, dir_fd, limit, owner)
    return None if found is None else found[0]


def read_with_stat(name: str, dir_fd: int, limit: int, owner: int | None = None) -> tuple[bytes, os.stat_result] | None:
    """At most ``limit`` bytes of a regular file in ``dir_fd``, and its ``fstat`` from before they
    were read; None when it is missing.

    The file is opened without following a symlink and without blocking, and ``fstat``-checked:
    anything but a regular file with one link (and, when ``owner`` is given, owned by that uid)
    raises OSError without a byte of it being read. A hard link to a file the user may not read
    is not theirs to show.
    """
    try:
        fd = os.open(name, FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link", name) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        if st.st_nlink != 1:
            raise OSError(errno.EPERM, "has other hard links", name)
        if owner is not None and st.st_uid != owner:
            raise OSError(errno.EPERM, "not owned by the mailbox owner", name)
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)
