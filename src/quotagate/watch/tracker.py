"""Usage of every mailbox kept current from file-system events (or polling), between scans.

Each mailbox has its current reading. An inotify event in a Maildir ``cur/`` or ``new/`` whose
file name the accounting profile sizes updates the folder's usage at once (see :mod:`deltas`);
any other event marks the mailbox dirty, and a dirty mailbox is measured again, reusing the
folders whose stamps did not change. Changes are handed on in batches every ``flush_seconds``,
so a burst of deliveries costs one store write. An event queue overflow makes every mailbox
dirty: nothing is ever silently lost, only re-read. A mailbox inotify runs out of watches for is
polled instead.

Every directory is watched through a descriptor opened as a scan opens it, never by a path its
owner could redirect; and since inotify keeps one watch (one mask) per inode, a watch shared by
two mailboxes (one's owner pointed it at the other's directory) gets the events both want.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from asyncinotify import Inotify, Mask, Watch
from msgspec.structs import replace

from quotagate.accounting import Profile, profile_for
from quotagate.config import Config
from quotagate.model import Format, Mailbox, MailboxUsage, Reading, State
from quotagate.outage import found_before, root_problem, vanished_problem
from quotagate.publish import PublishError
from quotagate.scan import kept_over, reading_for
from quotagate.spool import UnsafePath, located, mailbox_path, spool_roots
from quotagate.store import StoreError
from quotagate.usage import maildir, mbox, safefs
from quotagate.usage.mailbox import Found, beside_mbox, measure, timed_out, unchanged_each
from quotagate.usage.maildirsize import MAX_SIZE
from quotagate.usage.names import disk_name, display_name
from quotagate.usage.safefs import Roots
from quotagate.watch.deltas import message_delta
from quotagate.watch.lanes import Lanes

log = logging.getLogger(__name__)

# (changed readings, addresses no longer tracked)
Publish = Callable[[list[Reading], list[str]], Awaitable[None]]

_DIR_EVENTS = Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF
# No DONT_FOLLOW: a watch is added through /proc/self/fd/N, a link that must be followed.
_MESSAGE_DIR = _DIR_EVENTS | Mask.CLOSE_WRITE | Mask.ONLYDIR
_ROOT_DIR = _DIR_EVENTS | Mask.ONLYDIR
# An mbox: the file (appended to, rewritten) or a directory of them (files and directories
# coming and going anywhere in it: each of its directories is watched).
_MBOX = _DIR_EVENTS | Mask.MODIFY | Mask.CLOSE_WRITE | Mask.ATTRIB
_ARRIVED = Mask.CREATE | Mask.MOVED_TO
_LEFT = Mask.DELETE | Mask.MOVED_FROM
# The watch no longer stands for the path it was added by: the directory (or file) went, moved
# away (perhaps out of the mailbox, a new one put in its place), or its file system went.
_GONE = Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT
# A mailbox is measured again for a deletion at most this often (see Tracker._settle).
_SETTLE = 0.5
# How long a flush waits for a mailbox being measured before it hands on the others' readings
# and takes that one's at a later flush (see :mod:`lanes`): one slow mailbox holds up no other.
_PATIENCE = 0.5
_UNMOUNTED = "its file system was unmounted: unknown until it is found again"
# inotify (or the process) out of watches, kernel memory or descriptors: the mailbox is polled.
OUT_OF_WATCHES = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True)
class _Target:
    """What a watch is on for one mailbox: its root (folder None), a folder's own directory
    (sub None), or a folder's cur/ or new/; and the events the mailbox wants from it.

    Watches are added with MASK_ADD, so a watch shared with another mailbox carries the events
    of both: each mailbox takes only those of its own ``mask``.
    """

    address: str
    mask: Mask
    folder: str | None = None
    sub: str | None = None
    # ``folder`` is a path of directories below the root (an mbox home's, or a LAYOUT=fs tree's
    # directory between the root and a folder), walked one level at a time.
    tree: bool = False


class _Planned(NamedTuple):
    """What :meth:`Tracker._plan_watches` found: what the mailbox wants watched, by path; the
    watches added (inotify hands back the watch it has when a path still leads to the directory
    it was added for); the error that ran inotify out of watches, if one did; and whether every
    wanted path was looked at: then one with no watch added is no longer a directory of the
    mailbox's, and the watch it had goes (it may be on a directory moved out of the mailbox)."""

    wanted: dict[str, _Target]
    added: list[tuple[str, Watch]]
    short: OSError | None = None
    looked: bool = False


class Tracker:
    def __init__(self, config: Config, publish: Publish, mode: str = "inotify") -> None:
        self.config = config
        self.publish = publish
        self.mode = mode
        self._profile = profile_for(config.spool)
        self._roots = spool_roots(config.spool)  # realpath()s the roots: once, not per mailbox
        self.mailboxes: dict[str, Mailbox] = {}
        self.readings: dict[str, Reading] = {}
        self._paths: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._changed: set[str] = set()
        self._touched: set[str] = set()  # mailboxes with an event since the last rescan began
        # Measured by the last flush: an event for them may predate that measurement (the folder
        # was listed with or without the file), so it cannot be a delta: measure them again.
        self._measuring: set[str] = set()
        self._force: set[str] = set()  # written at the next flush even if unchanged (after a rescan)
        self._removed: set[str] = set()  # left the directory or disabled: their flag must go
        self._inotify: Inotify | None = None
        # A watch's targets, by mailbox and path. inotify gives one watch per inode: a mailbox whose
        # user symlinked it to another mailbox's directory gets that mailbox's watch back, and a
        # folder renamed is the same directory under a new path, so a watch may serve several
        # mailboxes and paths, and is removed only once none of them wants it.
        self._targets: dict[Watch, dict[tuple[str, str], _Target]] = {}
        self._watches: dict[str, dict[str, Watch]] = {}  # address -> watched path -> watch
        self._held: str | None = None  # why flushes keep the last state (see flush), None when not
        self._polled: set[str] = set()  # mailboxes inotify ran out of watches for: polled instead
        # Every reading is current up to this time (the start of the last completed cycle): a
        # mailbox with no event since is unchanged, whenever its reading was made. It stops
        # moving when the tracker stops or hangs, so its readings age as they should.
        self.confirmed_at = 0.0
        self._resync: set[str] = set()  # mailboxes whose watches the run loop brings up to date
        # Told of each message that lands in a new/ (the daemon releases the room held for it).
        # A message landed in a mailbox: its address, and its size when its name says (S=).
        self.on_delivery: Callable[[str, int | None], None] | None = None
        # A sized message moved out of a cur/ or new/, by the rename's cookie: counted as leaving
        # only when the next event is its arrival in the same mailbox (see _on_target_event).
        self._leaving: dict[int, list[tuple[_Target, tuple[int, int]]]] = {}
        # Mailboxes whose file system was unmounted under a watch: found missing, they are unknown
        # (a full one stays over quota) until a measurement finds them again (see _unless_unmounted).
        self._unmounted: set[str] = set()
        self._lanes: Lanes[Found] = Lanes(_PATIENCE)
        # When each mailbox's last measurement came in (time.monotonic), and the mailboxes a
        # deletion marked for a measurement no sooner than _SETTLE after it (see _settle).
        self._measured_mono: dict[str, float] = {}
        self._settling: dict[str, float] = {}

    # -- state ---------------------------------------------------------------------------------
    def load(self, mailboxes: Iterable[Mailbox], readings: dict[str, Reading]) -> None:
        """Start from a scan's readings: every enabled mailbox is tracked from here on."""
        wanted = {m.address: m for m in mailboxes if m.enabled}
        roots = self._roots
        for address in set(self.mailboxes) - set(wanted):
            self._let_go(address)
        for address, mailbox in wanted.items():
            if self._follow(mailbox, roots) and address in readings:
                self.readings[address] = readings[address]

    def update(self, written: Iterable[Mailbox], removed: Iterable[str] = ()) -> None:
        """What the directory changed since :meth:`load` (or the last update) took it: mailboxes
        ``written`` (added, with new limits or paths, enabled or disabled) and ``removed``; the
        others as they are. The tracker then follows what :meth:`load` of the whole would have
        it follow, without going through every mailbox."""
        roots = self._roots
        for address in removed:
            self._let_go(address)
        for mailbox in written:
            if mailbox.enabled:
                self._follow(mailbox, roots)
            else:
                self._let_go(mailbox.address)

    def _let_go(self, address: str) -> None:
        """Stop tracking a mailbox that left the directory or was disabled: its flag must go."""
        if address not in self.mailboxes:
            return
        self._unwatch(address)
        del self.mailboxes[address]
        self.readings.pop(address, None)
        self._paths.pop(address, None)
        for pending in (self._dirty, self._changed, self._measuring, self._force, self._polled, self._unmounted):
            pending.discard(address)
        self._settling.pop(address, None)
        self._measured_mono.pop(address, None)
        self._removed.add(address)

    def _follow(self, mailbox: Mailbox, roots: Roots) -> bool:
        """Track an enabled mailbox from here on (False: its path is refused)."""
        address = mailbox.address
        try:
            path = mailbox_path(mailbox, self.config.spool, roots)
        except UnsafePath:
            return False
        known = address in self.mailboxes
        if known and self.mailboxes[address] != mailbox:
            self._changed.add(address)  # new limits: the state (and the flag) may move
        moved = known and self._paths.get(address) != path
        self.mailboxes[address] = mailbox
        self._paths[address] = path
        self._removed.discard(address)
        if not known or moved:
            # Measured once watched: nothing falls between scan and watch; and where it is now
            # (given a new path, its usage and watches are those of the new place).
            self._dirty.add(address)
        return True

    def mark_dirty(self, address: str) -> bool:
        """A hint (e.g. Exim told us of a delivery): measure the mailbox again at the next flush."""
        if address not in self.mailboxes:
            return False
        self._dirty.add(address)
        self._touched.add(address)
        return True

    def begin_rescan(self) -> set[str]:
        """Start noting which mailboxes see events while a rescan runs."""
        self._touched = set()
        return self._touched

    def adopt(self, readings: dict[str, Reading], touched: set[str]) -> None:
        """Take a rescan's readings of the mailboxes tracked, except for those that changed while
        it ran: they are measured again. The mailboxes tracked stay as they are: who follows the
        directory (``serve``'s refreshes, ``watch``'s directory task) keeps them, not the rescan,
        whose store may list them otherwise (its config from before a SIGHUP, a moment ago)."""
        # A scan reads an unmounted volume's mailboxes as missing, empty: ours stand (unknown).
        touched = touched | {a for a in self._unmounted if a in readings and _missing(readings[a].usage)}
        for address in self.mailboxes.keys() & readings.keys() - touched:
            self.readings[address] = readings[address]
        touched_here = {a for a in touched if a in self.mailboxes}
        self._dirty.update(touched_here)
        # The rescan stored its own, older view of these: write ours over it.
        self._force.update(touched_here)
        # Watched from the run loop, off the event loop: the rescan may have found new folders.
        self._resync.update(self.readings)

    def watch_count(self) -> int:
        return sum(len(w) for w in self._watches.values())

    # -- watches -------------------------------------------------------------------------------
    def _wanted_paths(self, address: str) -> tuple[str, dict[str, _Target]]:
        """Where the mailbox was found, and what to watch in it by path (no I/O): nothing when it
        is polled (missing, unknown, not measured)."""
        path = self._paths.get(address)  # .get: run in a thread, the mailbox may just have left
        reading = self.readings.get(address)
        usage = reading.usage if reading else None
        if path is None or usage is None or not usage.known or usage.format is Format.MISSING:
            return "", {}
        root = located(path, reading, self.config.spool)
        if usage.format is Format.MBOX:  # its directories are found when watched (_plan_watches)
            return root, {root: _Target(address, _MBOX)}
        layout = self.config.spool.maildir_layout
        wanted = {root: _Target(address, _ROOT_DIR)}
        for f in usage.folders:
            base = maildir.folder_path(root, f.name, layout)
            if f.name != maildir.INBOX:
                wanted[base] = _Target(address, _ROOT_DIR, f.name)  # cur/ or new/ appearing later
            for sub in ("cur", "new"):
                wanted[f"{base}/{sub}"] = _Target(address, _MESSAGE_DIR, f.name, sub)
        return root, wanted

    def _plan_watches(self, address: str) -> _Planned:
        """Watches added for everything the mailbox wants watched now, not only for what it lacks:
        a path whose directory was replaced (a Maildir or folder moved aside, another moved in)
        gets a new watch, where the old one would have gone on watching the directory moved away.

        Each directory is opened as a scan opens it (symlinks followed within the roots on the
        way to the mailbox's root, none below it) and watched through /proc/self/fd: a path its
        owner swaps for a symlink meanwhile leads no watch elsewhere. Blocking, on directories
        the mailbox's user controls: run it in a thread.
        """
        assert self._inotify is not None
        root, wanted = self._wanted_paths(address)
        added: list[tuple[str, Watch]] = []
        if not wanted:
            return _Planned(wanted, added, looked=True)
        try:
            with safefs.opened(root, self._roots) as node:
                if node is not None:  # else gone meanwhile: nothing is its any more
                    for path, target in self._tree(address, root, node).items():
                        wanted.setdefault(path, target)
                    for path, target in wanted.items():
                        if (watch := self._add_watch(node.fd, target)) is not None:
                            added.append((path, watch))
        except OSError as exc:
            if exc.errno in OUT_OF_WATCHES:
                return _Planned(wanted, added, exc)
            # The root is gone or leads out of the roots now: the next measurement sees it.
        return _Planned(wanted, added, looked=True)

    def _tree(self, address: str, root: str, node: safefs.Node) -> dict[str, _Target]:
        """Every directory of an mbox home, or of a LAYOUT=fs tree (but the folders' own and
        their cur/, new/ and tmp/), to watch for what comes and goes in it: a folder made in one
        holding no folder yet (``Projects/2025`` in ``Projects/``) is seen as it comes."""
        reading = self.readings.get(address)
        if not node.is_dir or reading is None:
            return {}
        mbox_home = reading.usage.format is Format.MBOX
        if not mbox_home and self.config.spool.maildir_layout != "fs":
            return {}
        mask = _MBOX | Mask.ONLYDIR if mbox_home else _ROOT_DIR
        found = _directories(node.fd, mbox_home)
        return {f"{root}/{d}": _Target(address, mask, d, tree=True) for d in map(display_name, found)}

    def _add_watch(self, root_fd: int, target: _Target) -> Watch | None:
        """A watch on what ``target`` is on in the opened root, or None when it is gone or a
        symlink (the next measurement sees it). Raises only the errors of :data:`OUT_OF_WATCHES`."""
        assert self._inotify is not None
        try:
            fd = _open_target(root_fd, target, self.config.spool.maildir_layout)
            if fd is None:
                return None
            try:
                return self._inotify.add_watch(f"/proc/self/fd/{fd}", target.mask | Mask.MASK_ADD)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in OUT_OF_WATCHES:
                raise
            return None

    def _register(self, address: str, planned: _Planned) -> int:
        """Record what :meth:`_plan_watches` found (on the loop); returns how many of the mailbox's
        paths got a watch they did not have (new, or in place of one on a directory replaced)."""
        if address not in self.mailboxes:  # dropped meanwhile
            for path, watch in planned.added:
                self._drop(watch, address, path)
            return 0
        current = self._watches.setdefault(address, {})
        count = 0
        for path, watch in planned.added:
            target = planned.wanted[path]
            old = current.get(path)
            if old is watch and self._targets.get(watch, {}).get((address, path)) == target:
                continue  # the same directory, watched already
            if old is not None and old is not watch:
                self._drop(old, address, path)
            current[path] = watch
            self._targets.setdefault(watch, {})[(address, path)] = target
            count += 1
        # Dropped once the new paths hold their watches: a folder renamed has the same ones.
        now = dict(planned.added)
        for path in current.keys() - (now.keys() if planned.looked else planned.wanted.keys()):
            self._drop(current.pop(path), address, path)
        return count

    async def _sync_watches(self, address: str) -> int:
        """Watch what the mailbox holds now; returns how many paths got a new watch."""
        if self._inotify is None:
            return 0
        planned = await asyncio.to_thread(self._plan_watches, address)
        count = self._register(address, planned)
        if address in self.mailboxes:
            self._poll_unless_watched(address, planned.short)
        return count

    def _poll_unless_watched(self, address: str, short: OSError | None) -> None:
        """Poll a mailbox inotify ran out of watches for (``short``), until all its watches could
        be added. Said when the first one is, and when none is left: past the limit, every
        mailbox that changes would say it again."""
        if short is not None and address not in self._polled:
            if not self._polled:
                log.warning(
                    "out of inotify watches (%s) at %s: polling the mailboxes whose watches do not fit"
                    " (raise fs.inotify.max_user_watches)",
                    short.strerror,
                    address,
                )
            self._polled.add(address)
        elif short is None and address in self._polled:
            self._polled.discard(address)
            if not self._polled:
                log.info("every mailbox is watched again: none polled")

    def _unwatch(self, address: str) -> None:
        for path, watch in self._watches.pop(address, {}).items():
            self._drop(watch, address, path)

    def _drop(self, watch: Watch, address: str, path: str) -> None:
        """``address`` no longer wants ``watch`` for ``path``; it goes once no mailbox wants it
        for any path."""
        targets = self._targets.get(watch, {})
        targets.pop((address, path), None)
        if targets:
            return  # another path's or mailbox's directory too: keep it
        self._targets.pop(watch, None)
        if self._inotify is not None:
            with contextlib.suppress(OSError):  # the kernel already dropped it with the directory
                self._inotify.rm_watch(watch)

    # -- events --------------------------------------------------------------------------------
    def _on_event(self, watch: Watch | None, mask: Mask, name: str | None, cookie: int = 0) -> None:
        if self._leaving and not (mask & Mask.MOVED_TO and cookie in self._leaving):
            self._unpaired()  # a message moved out of the mailbox's cur/ and new/, or events lost
        if mask & Mask.Q_OVERFLOW:
            # Lost events may be IN_IGNOREDs: the measurements re-add every watch (_plan_watches),
            # replacing those on directories gone.
            log.warning("inotify queue overflowed: measuring every mailbox again")
            self._dirty.update(self.mailboxes)
            return
        targets = self._targets.get(watch) if watch is not None else None
        if not targets or watch is None:
            return
        if mask & _GONE:
            self._forget(watch, mask)
            return
        for target in list(targets.values()):
            if mask & target.mask:  # a shared watch also carries the events another mailbox wants
                self._on_target_event(target, mask, name, cookie)
        if mask & Mask.MOVED_TO:
            self._unpaired()  # moved here from another mailbox: it leaves that one

    def _forget(self, watch: Watch, mask: Mask) -> None:
        """The watch is no longer on what its paths lead to (see :data:`_GONE`): forget it for every
        mailbox and path, and measure them again (which watches what the paths lead to now). One
        whose file system was unmounted is unknown, not empty, until it is found again."""
        targets = self._targets.pop(watch, {})
        if mask & Mask.UNMOUNT:
            if not self._unmounted:
                log.warning(
                    "the file system of %s's mailbox was unmounted: mailboxes found missing on it are unknown"
                    " until found again",
                    next(iter(targets))[0],
                )
            self._unmounted.update(address for address, _ in targets)
        for address, path in targets:
            if self._watches.get(address, {}).get(path) is watch:
                del self._watches[address][path]
            self._touched.add(address)
            self._dirty.add(address)
        if not mask & Mask.IGNORED and self._inotify is not None:
            with contextlib.suppress(OSError):  # the kernel may have dropped it already
                self._inotify.rm_watch(watch)

    def _on_target_event(self, target: _Target, mask: Mask, name: str | None, cookie: int) -> None:
        """A file event in a mailbox: a change of its usage by the message's size (see
        :mod:`deltas`), or a measurement.

        A message that leaves never lowers the usage by the size in its name alone: the entry may
        not have been counted (a symlink or FIFO named as a big message, never counted by a
        measurement), and subtracting it would let its owner drive the usage below what a scan
        finds. Deleted, the mailbox is measured again (see :meth:`_settle`); renamed, it is
        weighed once it arrives in the same mailbox (see :meth:`_renamed`).
        """
        address = target.address
        self._touched.add(address)
        if target.folder is None or target.sub is None or name is None or mask & Mask.ISDIR:
            self._dirty.add(address)
            return
        if mask & _ARRIVED and target.sub == "new" and not name.startswith(".") and self.on_delivery is not None:
            self.on_delivery(address, self._profile.size_from_name(name))  # the room held for it can go
        delta = message_delta(name, bool(mask & _ARRIVED), self._profile) if mask & (_ARRIVED | _LEFT) else None
        if delta is not None and delta[1] < 0 and mask & Mask.DELETE:
            self._settle(address)
        elif delta is None or address in self._measuring:
            self._dirty.add(address)
        elif delta[1] < 0:
            self._leaving.setdefault(cookie, []).append((target, delta))
        elif address not in self._dirty:
            if mask & Mask.MOVED_TO and delta[1] and (left := self._arrived(address, cookie)) is not None:
                self._renamed(address, left, target.folder, delta)
            else:
                self._apply(address, target.folder, delta)

    def _renamed(self, address: str, left: tuple[str, tuple[int, int]], folder: str, delta: tuple[int, int]) -> None:
        """A message renamed within the mailbox: ``left`` its folder and delta before, ``folder``
        and ``delta`` after. Within its folder under the same size (``new/`` to ``cur/``, a flag)
        it changes nothing. Otherwise the mailbox is measured again: the entry may never have
        counted (a symlink named as a big message), and moving its named size into a folder that
        does not count, or down to a smaller name, would drive the usage below what is there."""
        before, gone = left
        if before == folder and (gone[0] + delta[0], gone[1] + delta[1]) == (0, 0):
            self._apply(address, folder, (0, 0))  # the folder's stamp changed all the same
        else:
            self._settle(address)

    def _settle(self, address: str) -> None:
        """Measure the mailbox again for a deletion: at once, or one :data:`_SETTLE` after its last
        measurement. A client expunging a selection deletes a message every few milliseconds:
        a measurement per flush of a mailbox of 50,000 messages would cost a core while it lasts;
        two a second keep its usage fresh within a second."""
        now, last = time.monotonic(), self._measured_mono.get(address)
        if address in self._measuring:  # measured now, perhaps before this deletion: once more, later
            self._settling.setdefault(address, now + _SETTLE)
        elif last is None or now - last >= _SETTLE:
            self._dirty.add(address)
        else:
            self._settling.setdefault(address, last + _SETTLE)

    def _settled(self) -> None:
        """The deletions whose wait is over: their mailboxes are measured at this flush."""
        now = time.monotonic()
        for address, due in list(self._settling.items()):
            if due <= now:
                del self._settling[address]
                self._dirty.add(address)

    def _arrived(self, address: str, cookie: int) -> tuple[str, tuple[int, int]] | None:
        """The folder and delta of the message of ``address`` whose rename ``cookie`` ends here."""
        leaving = self._leaving.get(cookie, [])
        for i, (target, delta) in enumerate(leaving):
            if target.address == address and target.folder is not None:
                del leaving[i]
                return target.folder, delta
        return None

    def _unpaired(self) -> None:
        """Messages moved where no event says they arrived in their mailbox: measured again."""
        for leaving in self._leaving.values():
            self._dirty.update(target.address for target, _ in leaving)
        self._leaving.clear()

    def _apply(self, address: str, folder: str, delta: tuple[int, int]) -> None:
        reading = self.readings.get(address)
        # Past what the store holds (forged S= values): measured again, which saturates as a scan does.
        if reading is None or reading.usage.all_bytes + delta[0] > MAX_SIZE:
            self._dirty.add(address)
            return
        folders = []
        for f in reading.usage.folders:
            if f.name == folder:
                # The stamp no longer matches: the next scan reads this folder again.
                f = f._replace(bytes=f.bytes + delta[0], messages=f.messages + delta[1], stamp=None)
                if f.bytes < 0 or f.messages < 0:
                    self._dirty.add(address)
                    return
            folders.append(f)
        self.readings[address] = replace(reading, usage=replace(reading.usage, folders=tuple(folders)))
        self._changed.add(address)

    # -- flushing --------------------------------------------------------------------------------
    def _measure_one(self, address: str) -> Found:
        """Measure the mailbox as a scan does (blocking: a lane's, see :mod:`lanes`); one measured
        before is unknown, not empty, when a directory above its own is gone (an unmounted volume)."""
        spool = self.config.spool
        previous, path = self.readings.get(address), self._paths.get(address)
        if path is None:  # left the directory while queued: the flush drops what comes back
            return Found("", MailboxUsage(Format.MISSING, error="not tracked any more"))
        return measure(
            path,
            spool.format,
            Found(previous.path, previous.usage) if previous else None,
            int((time.time() - self.config.scan.racy_seconds) * 1e9),
            self._roots,
            None,
            spool.maildir_subdir,
            self._profile,
            layout=spool.maildir_layout,
            require_parent=found_before(previous, located(path, previous, spool)),
        )

    def _late(self, address: str) -> Found:
        """Not measured within [scan] mailbox_timeout: unknown, and the others go on."""
        return timed_out(self._paths.get(address, ""), self.config.scan.mailbox_timeout)

    def _unless_unmounted(self, address: str, found: Found) -> Found:
        """What a measurement found, except that a mailbox whose file system was unmounted under a
        watch, found missing, is unknown rather than empty: the directory it was in is the empty
        mount point now. Found again (mounted again, or made again by a delivery), it counts."""
        if address not in self._unmounted or found.usage.format is not Format.MISSING:
            self._unmounted.discard(address)
            return found
        return Found(found.path, MailboxUsage(Format.MISSING, error=_UNMOUNTED)) if _missing(found.usage) else found

    def _pending(self) -> bool:
        """Whether a flush has work: mailboxes to measure that are not being measured already
        (those whose deletions settled now among them), readings or removals to hand on, a
        message moved out, measurements that came in, or some queued behind a stuck one."""
        self._settled()
        waiting = self._changed or self._force or self._removed or self._dirty - self._lanes.in_flight()
        # A message moved out waits for its arrival in the mailbox: the next event, or this flush.
        return bool(waiting or self._leaving) or self._lanes.has_ready() or self._lanes.stalled()

    async def flush(self) -> list[Reading]:
        """Measure what is dirty, total what changed, and hand the changed readings on.

        Evidence of an outage (the spool root gone or unmounted, too many mailboxes found missing
        at once) changes nothing: the readings stand, the batch waits for the next flush, and the
        log says so once. So does a batch the publisher could not write (kept, written again).
        """
        config = self.config
        in_flight = self._lanes.in_flight()
        if self._dirty - in_flight:
            problem = await asyncio.to_thread(root_problem, config.spool, config.scan.mailbox_timeout)
            if problem:
                self._hold(problem)
                return []
        self._unpaired()
        # Those being measured already stay dirty: measured again once their measurement is in.
        dirty, self._dirty = self._dirty - in_flight, self._dirty & in_flight
        changed, self._changed = self._changed, set()
        force, self._force = self._force, set()
        removed, self._removed = self._removed, set()
        # Events for these meanwhile mark them dirty, not deltas: a measurement replaces their
        # reading (one already in included, taken before the event).
        self._measuring = dirty | in_flight | self._lanes.ready()
        results = await self._lanes.run(sorted(dirty), self._measure_one, self._late, config.scan.mailbox_timeout)
        measured = {address: self._unless_unmounted(address, found) for address, found in results.items()}
        came_in = time.monotonic()
        self._measured_mono.update(dict.fromkeys(measured, came_in))
        now = time.time()
        fresh = {}
        for address in sorted(measured.keys() | changed | force):
            mailbox = self.mailboxes.get(address)
            if mailbox is None:
                continue
            previous = self.readings.get(address)
            found = measured.get(address)
            if found is None and previous is not None:
                found = Found(located(self._paths[address], previous, config.spool), previous.usage)
            if found is None:
                continue
            reading = reading_for(mailbox, found.path, found.usage, config, self._profile, now)
            if reading.state is State.UNKNOWN and previous is not None and previous.state is State.OVER:
                # As a scan keeps it (its owner may have made it unknown); said when it becomes
                # so, not at each poll that measures it again.
                reading = kept_over(reading, previous, say=previous.usage.known)
            fresh[address] = reading
        problem = vanished_problem(self.readings, self.readings | fresh, config.scan.max_vanished)
        if problem:
            self._dirty.update(measured)
            self._changed.update(changed)
            self._force.update(force)
            self._removed.update(removed)
            self._hold(problem)
            return []
        out = []
        for address, reading in fresh.items():
            if not _storable(reading):
                log.error(
                    "%s: %d bytes, %d messages cannot be stored: keeping its last reading",
                    address,
                    reading.bytes,
                    reading.messages,
                )
                continue
            previous = self.readings.get(address)
            self.readings[address] = reading
            if address in measured and await self._sync_watches(address):
                # Mail may have come between the listing and the new watch: measure once more,
                # now that events are seen.
                self._dirty.add(address)
            if previous is None or not reading.same_measure(previous) or address in force:
                out.append(reading)
        if out or removed:
            try:
                await self.publish(out, sorted(removed))
            except (PublishError, StoreError) as exc:
                self._force.update(r.address for r in out)
                self._removed.update(removed)
                self._hold(f"cannot store or publish usage: {exc}")
                return []
        self._hold(None)
        return out

    def _hold(self, problem: str | None) -> None:
        """Say once that the tracker keeps its last state, and why; and once that it stopped."""
        if problem == self._held:
            return
        if problem:
            log.error("keeping the last state: %s", problem)
        else:
            log.info("usage follows the spool again")
        self._held = problem

    async def _poll(self, everything: bool) -> None:
        """A mailbox whose mtimes moved is measured again: every one when polling instead of
        inotify, else those not created yet (nothing to watch until the first delivery), those
        inotify ran out of watches for, and mbox homes with a Maildir beside their files (their
        one watch does not see into it).

        The mtimes are the users' folders: looked at in a thread, never on the event loop.
        """
        spool = self.config.spool
        looked = [
            (address, located(self._paths[address], reading, spool), reading.usage)
            for address, reading in self.readings.items()
            if everything
            or reading.usage.format is Format.MISSING
            or address in self._polled
            or beside_mbox(reading.usage)
        ]
        if looked:
            moved = await asyncio.to_thread(_moved, looked, self._roots, self._profile, spool.maildir_layout)
            self._dirty.update(a for a in moved if a in self.mailboxes)

    # -- running ---------------------------------------------------------------------------------
    def start_watching(self) -> None:
        """Set up inotify watches; raises OSError (one of :data:`OUT_OF_WATCHES`) when they do not
        all fit, having set up none: the caller polls instead."""
        self._inotify = Inotify()
        try:
            for address in list(self.mailboxes):
                if address in self.readings:
                    planned = self._plan_watches(address)
                    self._register(address, planned)
                    if planned.short is not None:
                        raise planned.short
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._targets.clear()
        self._watches.clear()

    async def run(self) -> None:
        """Track until cancelled: events (or polling) in, batches of changed readings out."""
        flush_every = self.config.watch.flush_seconds
        if self.mode == "inotify" and self._inotify is None:
            self.start_watching()
        reader = asyncio.create_task(self._read_events()) if self._inotify is not None else None
        last_poll = 0.0
        polled_at = 0.0
        try:
            while True:
                started = time.time()
                for address in sorted(self._resync):
                    self._resync.discard(address)
                    await self._sync_watches(address)
                if time.monotonic() - last_poll >= self.config.watch.poll_seconds:
                    await self._poll(everything=self.mode == "poll")
                    last_poll = time.monotonic()
                    polled_at = started
                if self._pending():
                    await self.flush()
                else:  # a flush cycle passed: their events are deltas again
                    self._measuring = self._lanes.in_flight()
                # Polling sees a change only when it looks; events are seen as they come.
                self.confirmed_at = polled_at if self.mode == "poll" else started
                await asyncio.sleep(flush_every)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self.close()

    async def _read_events(self) -> None:
        assert self._inotify is not None
        async for event in self._inotify:
            name = None if event.name is None else display_name(str(event.name))
            self._on_event(event.watch, event.mask, name, event.cookie)


def _moved(
    looked: list[tuple[str, str, MailboxUsage]], roots: Roots, profile: Profile, layout: maildir.Layout
) -> list[str]:
    """The addresses whose folders' stamps no longer match their usage (blocking: a thread's)."""
    same = unchanged_each(((path, usage) for _, path, usage in looked), roots, profile, layout)
    return [address for (address, _, _), still in zip(looked, same, strict=True) if not still]


_MAILDIR_PARTS = frozenset({"cur", "new", "tmp"})


def _directories(root_fd: int, mbox_home: bool) -> list[str]:
    """The directories below an opened root as paths relative to it, depth first, following no
    symlink, at most :data:`maildir.MAX_FOLDERS` of them :data:`maildir.MAX_DEPTH` deep (the
    bounds of a measurement). Of an mbox home: those its measurement walks (not Dovecot's index,
    nor a Maildir it passes over: see :func:`mbox.holds_maildir`); of a LAYOUT=fs tree: all but a
    folder's cur/, new/ and tmp/. Blocking, on directories a user controls: a thread's."""
    found: list[str] = []

    def walk(fd: int, prefix: str, depth: int) -> None:
        with os.scandir(fd) as entries:
            names = [
                e.name
                for e in entries
                if e.is_dir(follow_symlinks=False)
                and (e.name != mbox.INDEX_DIR if mbox_home else e.name not in _MAILDIR_PARTS)
            ]
        for name in names:
            if len(found) >= maildir.MAX_FOLDERS:
                return
            sub = safefs.open_dir(name, fd)
            if sub is None:
                continue  # gone, or swapped for a symlink, since the listing
            try:
                if mbox_home and _passed_over(sub):
                    continue  # not counted: nothing in it to watch
                found.append(prefix + name)
                if depth + 1 < maildir.MAX_DEPTH:
                    walk(sub, f"{prefix}{name}/", depth + 1)
            finally:
                os.close(sub)

    walk(root_fd, "", 0)
    return found


def _passed_over(fd: int) -> bool:
    """Whether an mbox home's measurement passes over the directory as a Maildir; one it cannot
    tell (a file in it under its owner's lease: the measurement is unknown) is watched."""
    try:
        return mbox.holds_maildir(fd)
    except OSError:
        return False


def _open_target(root_fd: int, target: _Target, layout: maildir.Layout) -> int | None:
    """A new descriptor for what ``target`` is on, in the mailbox's opened root; None when it is
    gone or a symlink (never followed below the root)."""
    if target.folder is None:
        return os.dup(root_fd)
    if target.tree:
        return safefs.open_below(root_fd, disk_name(target.folder))
    folder = maildir.open_folder(root_fd, disk_name(target.folder), layout)
    if folder is None or target.sub is None:
        return folder
    try:
        return safefs.open_dir(target.sub, folder)
    finally:
        os.close(folder)


def _missing(usage: MailboxUsage) -> bool:
    """Measured and found missing (not unknown: that is an error's)."""
    return usage.known and usage.format is Format.MISSING


def _storable(reading: Reading) -> bool:
    """Whether the store's 64-bit columns hold the reading's totals."""
    return 0 <= reading.bytes <= MAX_SIZE and 0 <= reading.messages <= MAX_SIZE
