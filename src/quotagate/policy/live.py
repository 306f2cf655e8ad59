"""What the daemon knows: limits and stored usage from the store, and maildirsize read live.

Every ``refresh_seconds`` (off the event loop) what changed in the store since the last refresh
is applied to a copy of compact columns (:mod:`quotagate.policy.compact`), giving an immutable
:class:`Snapshot` the request path reads without locks; the loop swaps it in whole. A
Maildir++ ``maildirsize`` is read at request time (:mod:`quotagate.policy.liveusage`, through
:mod:`quotagate.policy.files`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from quotagate.config import FolderRule
from quotagate.model import AliasDomains, Mailbox, Reading, State, Usage
from quotagate.policy import compact
from quotagate.policy.claim import LIVE_OVER_FILES
from quotagate.store import Store
from quotagate.store.base import Folders
from quotagate.usage.folders import any_limits, may_be_limited


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
    domain_aliases: AliasDomains = field(default_factory=AliasDomains)
    # The domains of the mailboxes (and of those gone since the daemon started: never fewer).
    domains: frozenset[str] = frozenset()

    def fresh_at(self, reading: Reading) -> float:
        """When ``reading`` was last known to be current."""
        confirmed = self.confirmed() if self.confirmed is not None else self.confirmed_at
        return max(reading.measured_at, confirmed)

    def stored_usage(self, address: str) -> Usage | None:
        r = self.readings.get(address)
        if r is None or r.state is State.UNKNOWN:
            return None
        return Usage(r.bytes, r.messages, self.fresh_at(r), self.source)


LIVE = "maildirsize"  # read at request time: current


def measured_ago(usage: Usage, now: float) -> float:
    """How long ago the usage was measured, as far as room in flight goes: a maildirsize as long
    ago as it was read (a value kept between requests is as old as its read); a maildirsize over
    the files is no measurement of them (its reading is)."""
    return max(now - usage.measured_at, 0.0)


def usage_age(usage: Usage, now: float) -> float:
    """How old the usage behind a decision is: a maildirsize as old as its read (its mtime only
    says when its numbers last changed); one over the files is current in what it adds."""
    return 0.0 if usage.source == LIVE_OVER_FILES else max(now - usage.measured_at, 0.0)


def load_snapshot(store: Store, with_readings: bool = True, with_folders: bool = True) -> Snapshot:
    """Everything the request path needs, in one go (blocking: run it in a thread).

    Without readings when usage is tracked live: loading them would only be thrown away. Per-folder
    usage is needed only for folders with limits of their own (local+folder checks); parsing it
    for every mailbox would hold the interpreter for a noticeable while on a large spool.
    """
    mailboxes = {m.address: m for m in store.mailboxes()}
    readings = store.readings(with_folders) if with_readings else {}
    last = store.last_scan()
    aliases = store.domain_aliases()
    domains = frozenset(a.rpartition("@")[2] for a in mailboxes)
    started = last.started_at if last else 0.0
    return Snapshot(mailboxes, readings, started, time.time(), domain_aliases=aliases, domains=domains)


@dataclass(frozen=True)
class MailboxChanges:
    """Mailboxes a load wrote (added, or with new limits, paths or enabled) and removed."""

    written: Sequence[Mailbox]
    removed: Sequence[str]


def _limited_by(rules: tuple[FolderRule, ...]) -> Callable[[str], bool]:
    """Whether a folder has limits of its own under ``rules``, or may be taken for one that has
    when Exim asks with A-Z lowered (``archive`` beside the rule ``Archive``: then it is the one
    on disk, judged by its own rule): asked once per name, as a million mailboxes share a few
    folder names (a bounded cache: the names are the users' own)."""

    @functools.lru_cache(maxsize=4096)
    def limited(name: str) -> bool:
        return may_be_limited(name, rules)

    return limited


class SnapshotLoader:
    """Loads the store into a :class:`Snapshot`, then only what changed since (the store's change
    stamp); call :meth:`load` in a worker thread, never on the loop.

    A load that fails leaves the loader as it was: the next one starts from the same stamp.
    """

    def __init__(self) -> None:
        self._table: compact.Table | None = None
        # The columns of objects of the versions the loop may still hold, the last one last: each
        # load frees the others here, in the loader's thread (tens of milliseconds at a million
        # mailboxes), rather than the loop when it lets go of them.
        self._retired: list[object] = []
        self._stamp: int | None = None
        self._shape: tuple[bool, bool, tuple[FolderRule, ...]] | None = None
        self._domains: frozenset[str] = frozenset()
        # What the last load changed in the mailboxes, for what follows them (the live tracker),
        # which then need not go through them all: None when it may be any of them (the first
        # load, or one into a new generation of rows).
        self.mailbox_changes: MailboxChanges | None = None

    def forget(self) -> None:
        """Load everything next time (another store, a new config)."""
        if self._table is not None:
            self._retired.append(self._table.objects())
        self._table, self._stamp, self._shape = None, None, None
        self._domains = frozenset()

    def load(
        self,
        store: Store,
        with_readings: bool = True,
        with_folders: bool = True,
        folder_rules: Sequence[FolderRule] = (),
    ) -> Snapshot:
        """``folder_rules``: when some set limits, only the folders they limit are kept of each
        reading (all of them when none does)."""
        rules = tuple(folder_rules)
        shape = (with_readings, with_folders, rules)
        since = self._stamp if shape == self._shape else None
        limited = with_folders and any_limits(rules)
        folders: Folders = _limited_by(rules) if limited else with_folders
        changes = store.changes(since, with_readings, folders)
        previous = self._table
        before = previous if since is not None else None
        table = compact.updated(before, changes)
        if changes.mailbox_count is not None and changes.mailbox_count != len(table.mailboxes):
            # rows added or removed without a stamp (by hand, in SQL): read them all again
            changes = store.changes(None, with_readings, folders)
            table, before = compact.updated(previous, changes), None
        last, stamp = changes.last_scan, changes.stamp
        readings: Mapping[str, Reading] = table.readings if with_readings else {}
        aliases = store.domain_aliases()  # a few rows: read whole at each load
        whole = before is None or changes.mailboxes_full
        written = table.mailboxes if whole else (m.address for m in changes.mailboxes)
        if new := {a.rpartition("@")[2] for a in written} - self._domains:
            self._domains = self._domains | new
        snapshot = Snapshot(
            table.mailboxes,
            readings,
            last.started_at if last else 0.0,
            time.time(),
            domain_aliases=aliases,
            domains=self._domains,
        )
        if self._table is not None:
            self._retired.append(self._table.objects())
        del self._retired[:-1]  # the loop holds the last one until it takes this snapshot
        self._table, self._stamp, self._shape = table, stamp, shape
        if before is not None and not changes.mailboxes_full:
            self.mailbox_changes = MailboxChanges(changes.mailboxes, changes.removed_mailboxes)
        else:  # every mailbox was read: what changed is what differs from the last load
            diff = compact.mailbox_changes(previous, table) if previous is not None else None
            self.mailbox_changes = None if diff is None else MailboxChanges(*diff)
        return snapshot
