"""Live usage from a Maildir++ ``maildirsize``, read as the scanner reaches files.

It is read at request time, in the reader process (:mod:`quotagate.policy.files`: it is a file
its user controls, and a read can hang), cached by its stat, and trusted only when the last scan
found it agreeing with the files: a stale or hand-edited one never decides. This module stays
small, without the store or the config, so that the reader process starts at once.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from quotagate.model import Reading, Usage
from quotagate.usage import maildirsize, safefs
from quotagate.usage.safefs import Node, Roots


@dataclass(frozen=True)
class Unreadable:
    """A maildirsize that is there but could not be read safely (a FIFO, a timeout, EACCES):
    the last value read from it, else the stored reading, decides (PolicyService._decide)."""

    reason: str


# What a live read gives: current usage, None (no maildirsize to go by: use the stored usage),
# or Unreadable (not read now: the last value read decides).
Live: TypeAlias = Usage | Unreadable | None


class MaildirsizeReader:
    """Live usage from maildirsize files, read again only when its stat changed.

    The file is reached as the scanner reaches it (:mod:`quotagate.usage.safefs`): the Maildir
    walked from an allowed root through directory descriptors, the file opened ``O_NOFOLLOW |
    O_NONBLOCK`` and checked to be a regular file with one link, owned by the Maildir's owner.
    """

    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        self._cache: dict[str, tuple[tuple[int, int, int], tuple[int, int] | None]] = {}

    @staticmethod
    def wanted(reading: Reading) -> bool:
        """Whether the mailbox's maildirsize is worth reading: the last scan found it agreeing with
        the files (a stale or hand-edited one never decides). No I/O."""
        info = reading.usage.maildirsize
        return info is not None and info.agrees_with(reading.bytes, reading.messages)

    def read_now(self, mailbox: str, opened: Callable[[int], object] | None = None) -> Usage | None:
        """The usage of the mailbox at ``mailbox`` from its maildirsize, or None when there is
        none to go by. ``opened`` is given the descriptor of the directory reached, before its
        maildirsize is looked at (the reader process watches it: the directory read, not
        whatever the path leads to a moment later).

        Blocking, on a file the mailbox's owner controls: never call it on the event loop (see
        :mod:`quotagate.policy.files`). Raises OSError when the file is there but not safely readable.
        """
        path = os.path.join(mailbox, maildirsize.FILE_NAME)
        with safefs.opened(mailbox, self.roots) as node:
            if node is None or not node.is_dir:
                return None
            if opened is not None:
                opened(node.fd)
            try:
                st = os.stat(maildirsize.FILE_NAME, dir_fd=node.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if st.st_size >= maildirsize.MAX_TRUSTED_BYTES:
                return None  # Maildir++: a reader must not trust a file this large (Dovecot: 5120 or more)
            key = (st.st_ino, st.st_ctime_ns, st.st_size)
            cached = self._cache.get(path)
            if cached is None or cached[0] != key:
                totals = self._read(node)
                self._cache[path] = (key, totals)
            else:
                totals = cached[1]
        if totals is None:
            return None
        # As measured when read: a value kept between requests (see quotagate.policy.files) says
        # nothing of deliveries after this moment, and must not release their room in flight.
        return Usage(totals[0], totals[1], time.time(), "maildirsize")

    @staticmethod
    def _read(node: Node) -> tuple[int, int] | None:
        raw = safefs.read_regular(maildirsize.FILE_NAME, node.fd, maildirsize.MAX_TRUSTED_BYTES + 1, node.st.st_uid)
        if raw is None:
            return None
        parsed = maildirsize.parse(raw.decode("ascii", "replace"))
        if parsed.info is None or parsed.info.bytes < 0 or parsed.info.messages < 0:
            return None
        return parsed.info.bytes, parsed.info.messages

    def read(self, mailbox: str, opened: Callable[[int], object] | None = None) -> Live:
        """:meth:`read_now`, with errors as values (one bad mailbox is one unknown mailbox)."""
        try:
            return self.read_now(mailbox, opened)
        except OSError as exc:
            return Unreadable(exc.strerror or type(exc).__name__)
        except ValueError as exc:  # e.g. a NUL in the path
            return Unreadable(type(exc).__name__)
