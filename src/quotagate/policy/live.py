"""What the daemon knows: limits and stored usage from the store, and maildirsize read live.

Every ``refresh_seconds`` (off the event loop) what changed in the store since the last refresh
is applied to a copy of compact columns (:mod:`quotagate.policy.compact`), giving an immutable
:class:`Snapshot` the request path reads without locks; the loop swaps it in whole. A
Maildir++ ``maildirsize`` is read at request time, in a reader process
(:mod:`quotagate.policy.files`: it is a file its user controls, and a read can hang), cached by
its stat, and trusted only when the last scan found it agreeing with the files: a stale or
hand-edited one never decides.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from quotagate.model import Mailbox, Reading, State, Usage
from quotagate.policy import compact
from quotagate.store import Store
from quotagate.usage import maildirsize, safefs
from quotagate.usage.safefs import Node, Roots


@dataclass(frozen=True)
class Snapshot:
    """Limits and usage as last loaded, and how fresh that usage is.

    A reading's row changes only when its numbers do: an idle full mailbox keeps an old
    ``measured_at`` although every scan since confirmed it. Its usage is as fresh as the last
    scan (``confirmed_at``) or, with live tracking, the tracker's last completed cycle
    (``confirmed``, asked at request time: it moves while the snapshot does not, and stops
    moving when the tracker dies).
    """

    mailboxes: Mapping[str, Mailbox] = field(default_factory=dict)
    readings: Mapping[str, Reading] = field(default_factory=dict)
    confirmed_at: float = 0.0  # when the last scan started: unchanged readings are this fresh
    loaded_at: float = 0.0
    source: str = "scan"  # "watch" when the readings are kept live from file-system events
    confirmed: Callable[[], float] | None = None  # the tracker's last cycle, replacing confirmed_at

    def fresh_at(self, reading: Reading) -> float:
        """When ``reading`` was last known to be current."""
        confirmed = self.confirmed() if self.confirmed is not None else self.confirmed_at
        return max(reading.measured_at, confirmed)

    def stored_usage(self, address: str) -> Usage | None:
        r = self.readings.get(address)
        if r is None or r.state is State.UNKNOWN:
            return None
        return Usage(r.bytes, r.messages, self.fresh_at(r), self.source)


def usage_age(usage: Usage, now: float) -> float:
    """How old the usage behind a decision is: a maildirsize is read at request time, so its
    numbers are current (its mtime only says when they last changed)."""
    return 0.0 if usage.source == "maildirsize" else max(now - usage.measured_at, 0.0)


def load_snapshot(store: Store, with_readings: bool = True, with_folders: bool = True) -> Snapshot:
    """Everything the request path needs, in one go (blocking: run it in a thread).

    Without readings when usage is tracked live: loading them would only be thrown away. Per-folder
    usage is needed only for folders with limits of their own (local+folder checks); parsing it
    for every mailbox would hold the interpreter for a noticeable while on a large spool.
    """
    mailboxes = {m.address: m for m in store.mailboxes()}
    readings = store.readings(with_folders) if with_readings else {}
    last = store.last_scan()
    return Snapshot(mailboxes, readings, last.started_at if last else 0.0, time.time())


class SnapshotLoader:
    """Loads the store into a :class:`Snapshot`, then only what changed since (the store's change
    stamp); call :meth:`load` in a worker thread, never on the loop.

    A load that fails leaves the loader as it was: the next one starts from the same stamp.
    """

    def __init__(self) -> None:
        self._table: compact.Table | None = None
        self._stamp: int | None = None
        self._shape: tuple[bool, bool] | None = None

    def forget(self) -> None:
        """Load everything next time (another store, a new config)."""
        self._table, self._stamp, self._shape = None, None, None

    def load(self, store: Store, with_readings: bool = True, with_folders: bool = True) -> Snapshot:
        shape = (with_readings, with_folders)
        since = self._stamp if shape == self._shape else None
        changes = store.changes(since, with_readings, with_folders)
        table = compact.updated(self._table if since is not None else None, changes)
        if changes.mailbox_count is not None and changes.mailbox_count != len(table.mailboxes):
            # rows added or removed without a stamp (by hand, in SQL): read them all again
            changes = store.changes(None, with_readings, with_folders)
            table = compact.updated(None, changes)
        last, stamp = changes.last_scan, changes.stamp
        readings: Mapping[str, Reading] = table.readings if with_readings else {}
        snapshot = Snapshot(table.mailboxes, readings, last.started_at if last else 0.0, time.time())
        self._table, self._stamp, self._shape = table, stamp, shape
        return snapshot


@dataclass(frozen=True)
class Unreadable:
    """A maildirsize that is there but could not be read safely (a FIFO, a timeout, EACCES):
    this mailbox's usage is unknown for this request."""

    reason: str


# What a live read gives: current usage, None (no maildirsize to go by: use the stored usage),
# or Unreadable (the mailbox is unknown for now).
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

    def read_now(self, mailbox: str) -> Usage | None:
        """The usage of the mailbox at ``mailbox`` from its maildirsize, or None when there is
        none to go by.

        Blocking, on a file the mailbox's owner controls: never call it on the event loop (see
        :mod:`quotagate.policy.files`). Raises OSError when the file is there but not safely readable.
        """
        path = os.path.join(mailbox, maildirsize.FILE_NAME)
        with safefs.opened(mailbox, self.roots) as node:
            if node is None or not node.is_dir:
                return None
            try:
                st = os.stat(maildirsize.FILE_NAME, dir_fd=node.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if st.st_size > maildirsize.MAX_TRUSTED_BYTES:
                return None  # Maildir++: a reader must not trust a file this large
            key = (st.st_ino, st.st_ctime_ns, st.st_size)
            cached = self._cache.get(path)
            if cached is None or cached[0] != key:
                totals = self._read(node)
                self._cache[path] = (key, totals)
            else:
                totals = cached[1]
        if totals is None:
            return None
        return Usage(totals[0], totals[1], st.st_mtime_ns / 1e9, "maildirsize")

    @staticmethod
    def _read(node: Node) -> tuple[int, int] | None:
        raw = safefs.read_regular(maildirsize.FILE_NAME, node.fd, maildirsize.MAX_TRUSTED_BYTES + 1, node.st.st_uid)
        if raw is None:
            return None
        parsed = maildirsize.parse(raw.decode("ascii", "replace"))
        if parsed.info is None or parsed.info.bytes < 0 or parsed.info.messages < 0:
            return None
        return parsed.info.bytes, parsed.info.messages

    def read(self, mailbox: str) -> Live:
        """:meth:`read_now`, with errors as values (one bad mailbox is one unknown mailbox)."""
        try:
            return self.read_now(mailbox)
        except OSError as exc:
            return Unreadable(exc.strerror or type(exc).__name__)
        except ValueError as exc:  # e.g. a NUL in the path
            return Unreadable(type(exc).__name__)
