"""maildirsize reads for the event loop: off it, bounded, timed out, and cached while current.

A maildirsize is a file its mailbox's user controls (it may be a FIFO) and may sit on a dead NFS
mount, where even ``stat`` hangs: the loop never touches it. :class:`FileReads` hands the read
to a reader process (:mod:`quotagate.policy.filereader`: its threads read, at most one read per
file at a time), and a request waits at most ``timeout`` for it.

A round trip to the reader costs more than the rest of a check, so a value read is kept while it
is current: the reader also puts an inotify watch on the mailbox's directory (on our inotify
descriptor, which it inherits), and any change to its maildirsize (an MDA appending, a rename
over it) drops the kept value. Our own inotify descriptor is polled before every lookup, and
read when events wait, so a change made before a request arrived is always seen by it. (Read at
every lookup instead, it failed with EAGAIN nearly always: a request on a new connection spent
~11 us of the daemon's CPU on that read and its exception.) On a file system of this host a
value is kept until such an event; elsewhere at most ``keep_seconds`` (a
change made by another NFS client raises none). A delivery hint drops it, and a directory that
cannot be watched (or would take more than a quarter of fs.inotify.max_user_watches, which
[watch] shares) is simply read every time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from asyncinotify import Inotify, Mask
from msgspec.structs import replace

from quotagate.model import Usage
from quotagate.policy.filereader import ReaderProcess, Result
from quotagate.policy.liveusage import Live, Unreadable
from quotagate.policy.metrics import Tally
from quotagate.policy.reader import MOST_THREADS
from quotagate.usage.maildirsize import FILE_NAME
from quotagate.usage.safefs import Roots
from quotagate.watch.limits import current_limit

log = logging.getLogger(__name__)

FILE_WORKERS = 4
"""Threads of the reader process reading maildirsize files: a bound, whatever hangs."""

T = TypeVar("T")

_NAME = os.fsencode(FILE_NAME)
_CHANGED = Mask.MODIFY | Mask.CLOSE_WRITE | Mask.ATTRIB | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO
_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT | Mask.IGNORED
# The reader names the directory it opened as /proc/self/fd/N: that link must be followed.
_WATCH = _CHANGED | _GONE | Mask.ONLYDIR
_DEFAULT_WATCHES = 2048  # when fs.inotify.max_user_watches cannot be read
AHEAD = 8
"""Reads asked ahead of requests (see :meth:`FileReads.warm`) at most at a time: a request's own
read never waits behind more than these in the reader."""
REREAD_SECONDS = 1.0
"""A changed value is read again ahead of requests at most this often per mailbox: one whose
user rewrites its maildirsize in a loop is read when a request asks, and keeps no reader busy."""
# Reads hung at once that make the daemon start the reader afresh (half the threads the reader
# may have: see quotagate.policy.reader), and how long their mailboxes then go without a read.
HUNG_LIMIT = MOST_THREADS // 2
SET_ASIDE_SECONDS = 600.0
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class _Pending:
    """One path being read, the requests waiting for it, and what changed meanwhile."""

    __slots__ = ("ahead", "epoch", "generation", "started", "waiters")

    def __init__(self, started: float, epoch: int, generation: int, ahead: bool = False) -> None:
        self.started = started
        self.ahead = ahead  # asked by warm(), not by a request
        self.waiters: list[tuple[asyncio.Future[Any], Callable[[Live], Any], asyncio.TimerHandle]] = []
        self.epoch = epoch
        self.generation = generation


class FileReads:
    """See the module docstring. Lives on one event loop (taken at the first :meth:`start`)."""

    def __init__(
        self, roots: Roots, timeout: float, keep_seconds: float, lookups: Tally, workers: int = FILE_WORKERS
    ) -> None:
        """``lookups``: a counter labelled by source (kept, read)."""
        self.roots = roots
        self._kept_lookups, self._read_lookups = lookups.labels("kept"), lookups.labels("read")
        self.timeout = timeout
        self.keep_seconds = keep_seconds
        self.workers = workers
        self._reader: ReaderProcess | None = None
        self._pending: dict[str, _Pending] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inotify: Inotify | None = None
        self._queued: select.poll | None = None  # whether events wait on it, asked without a read
        # path -> (value, when its read was asked, whether only an event makes it stale)
        self._kept: dict[str, tuple[Live, float, bool]] = {}
        self._roots: dict[int, str] = {}  # watch descriptor -> mailbox directory
        self._watched: dict[str, int] = {}  # and back
        self._generation: dict[str, int] = {}  # path -> changes seen
        self._epoch = 0  # bumped when changes may have been missed (queue overflow)
        self._ahead: dict[str, None] = {}  # paths to read before a request asks (a set: each once)
        self._ahead_asked = 0
        self._reread: dict[str, float] = {}  # path -> when a change last had it read ahead
        self._set_aside: dict[str, float] = {}  # path -> until when: its reads hung (see _too_many_hung)
        self._warming: list[float] | None = None  # when warm() was asked, and the reads since
        # The watches are the system user's, shared with [watch]: take at most a quarter of them.
        limit = current_limit()
        self._watch_budget = _DEFAULT_WATCHES if limit is None else limit // 4

    def share_watches(self, processes: int) -> None:
        """This many processes (serve --workers) each watch the same directories: take a part of
        the quarter, not a quarter each."""
        self._watch_budget //= max(processes, 1)

    def start(self, path: str, then: Callable[[Live], T]) -> T | asyncio.Future[T]:
        """``then`` of the live usage of the mailbox at ``path``: at once when it is known without
        waiting (kept and current, a read of this path hung, no reader), else a future resolved
        on the loop."""
        loop = self._loop or self.begin()
        self.drain()
        now = loop.time()
        kept = self._kept.get(path)
        if kept is not None and (kept[2] or now - kept[1] < self.keep_seconds):
            self._kept_lookups.inc()
            value = kept[0]
            if kept[2] and isinstance(value, Usage):
                # Watched, and no event since it was read: the file is as read, now. (One kept
                # for a while instead, elsewhere than on this host, is as old as its read.)
                value = replace(value, measured_at=time.time())
            return then(value)
        self._read_lookups.inc()
        pending = self._pending.get(path)
        if pending is None:
            assert self._reader is not None
            if self._aside(path, now):
                return then(Unreadable("its reads hung: set aside for a while"))
            self._too_many_hung(now)  # before the reader's threads are all stuck and reads queue
            if not self._reader.running:
                return then(Unreadable("no maildirsize reader is running"))
            pending = self._pending[path] = _Pending(now, self._epoch, self._generation.get(path, 0))
            self._reader.ask(path, self._may_watch(path))
        elif now - pending.started >= self.timeout:
            self._too_many_hung(now)
            return then(Unreadable("an earlier read of it is still hung"))
        future: asyncio.Future[T] = loop.create_future()
        timer = loop.call_at(pending.started + self.timeout, _expire, future, then, self.timeout)
        pending.waiters.append((future, then, timer))
        return future

    def _aside(self, path: str, now: float) -> bool:
        return self._set_aside.get(path, now) > now

    def _too_many_hung(self, now: float) -> None:
        """With HUNG_LIMIT reads hung at once, start the reader afresh (its threads stuck in them
        are gone with it) and set their mailboxes aside for SET_ASIDE_SECONDS: they answer DUNNO
        without a read meanwhile. Below the reader's MOST_THREADS, the reads still waiting then
        are only those stuck, not others queued behind them."""
        oldest = next(iter(self._pending.values()), None)  # reads are kept in the order they began
        if oldest is None or now - oldest.started < self.timeout or self._reader is None:
            return  # none hung: the common case, on every read a request asks, costs no pass
        hung = [path for path, pending in self._pending.items() if now - pending.started >= self.timeout]
        if len(hung) < HUNG_LIMIT:
            return
        self._set_aside = {path: until for path, until in self._set_aside.items() if until > now}
        self._set_aside.update(dict.fromkeys(hung, now + SET_ASIDE_SECONDS))
        log.warning(
            "%d maildirsize reads hung at once (FUSE or NFS mounts?): starting the reader afresh; those"
            " mailboxes get DUNNO without a read for %gs",
            len(hung),
            SET_ASIDE_SECONDS,
        )
        self._reader.replace()

    def warm(self, paths: Iterable[str]) -> None:
        """Read these mailboxes' maildirsize before a request asks (at start: every mailbox that
        has one, up to the watch budget), :data:`AHEAD` at a time. A value then changed is read
        again at once too, so that a request seldom waits for the reader: only for a mailbox
        whose value changed a moment before, or that was never read."""
        self._ahead.update(dict.fromkeys(paths))
        if self._loop is not None:
            self._warming = [self._loop.time(), 0]
        self._read_ahead()

    @property
    def watch_budget(self) -> int:
        """The most mailbox directories watched, hence values kept."""
        return self._watch_budget

    def _may_watch(self, path: str) -> bool:
        return self._inotify is not None and (path in self._watched or len(self._watched) < self._watch_budget)

    def _read_ahead(self) -> None:
        reader, loop = self._reader, self._loop
        if reader is None or loop is None or not reader.running:
            return
        while self._ahead_asked < AHEAD and self._ahead and reader.running:
            path = self._ahead.popitem()[0]
            if (
                path in self._kept
                or path in self._pending
                or not self._may_watch(path)
                or self._aside(path, loop.time())
            ):
                continue  # known, being read, nothing read would be kept, or its reads hung
            self._pending[path] = _Pending(loop.time(), self._epoch, self._generation.get(path, 0), ahead=True)
            self._ahead_asked += 1
            reader.ask(path, True)
            if self._warming is not None:
                self._warming[1] += 1
        if self._warming is not None and not self._ahead and not self._ahead_asked:
            started, count = self._warming
            self._warming = None
            if count:
                log.info("read %d maildirsize files ahead of requests in %.1fs", count, loop.time() - started)

    def set_roots(self, roots: Roots) -> None:
        """Where mailboxes may live changed (a reload)."""
        self.roots = roots
        if self._reader is not None:
            self._reader.set_roots(roots)

    async def ready(self, timeout: float = 10.0) -> None:
        """Wait until the reader process is up (after :meth:`begin`), so that the first requests
        do not spend their file_timeout on its start; says so in the log if it is not."""
        if self._reader is not None and not await self._reader.ready(timeout):
            log.warning("the maildirsize reader is not up after %gs: reads wait for it meanwhile", timeout)

    def close(self) -> None:
        """Stop the reader process (the daemon is exiting)."""
        if self._reader is not None:
            self._reader.close()

    @property
    def reader_pid(self) -> int | None:
        return None if self._reader is None else self._reader.pid

    def forget(self, path: str) -> None:
        """Drop what is kept for the mailbox at ``path`` (told of a delivery), and read it again."""
        self._kept.pop(path, None)
        self._generation[path] = self._generation.get(path, 0) + 1
        if path in self._watched:
            self._read_again(path)

    def _read_again(self, path: str) -> None:
        """Read a changed value ahead of requests, unless one was read so within REREAD_SECONDS."""
        now = self._loop.time() if self._loop is not None else 0.0
        if now - self._reread.get(path, -REREAD_SECONDS) >= REREAD_SECONDS:
            self._reread[path] = now
            self._ahead[path] = None

    def drain(self) -> None:
        """Read the change events queued so far (our descriptor, non-blocking) and drop what they
        make stale."""
        if self._queued is None or not self._queued.poll(0):
            return  # nothing queued (the common case): no read, no exception
        assert self._inotify is not None
        try:
            data = os.read(self._inotify.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            root = self._roots.get(wd)
            if mask & Mask.Q_OVERFLOW or root is None:  # lost events, or a watch not recorded yet
                # Not read again ahead: a user can overflow the queue at will from their Maildir.
                self._kept.clear()
                self._epoch += 1
            elif mask & _GONE:
                self.forget(root)
                if mask & Mask.IGNORED:
                    del self._roots[wd]
                    self._watched.pop(root, None)
                    self._reread.pop(root, None)
            elif name == _NAME:
                self.forget(root)
        if offset < len(data) or len(data) == 65536:
            self.drain()  # more queued than one read took
        elif self._ahead:
            self._read_ahead()

    def begin(self) -> asyncio.AbstractEventLoop:
        """Start watching and the reader process, on the running loop (else at the first read:
        the reader takes a moment to start, which the first reads would wait for)."""
        if self._loop is not None:
            return self._loop
        loop = self._loop = asyncio.get_running_loop()
        try:
            self._inotify = Inotify()
            # asyncinotify's NONBLOCK flag has CLOEXEC's value: the descriptor comes out blocking.
            os.set_blocking(self._inotify.fd, False)
            self._queued = select.poll()
            self._queued.register(self._inotify.fd, select.POLLIN)
            loop.add_reader(self._inotify.fd, self.drain)  # also between requests: no overflow
        except OSError as exc:
            log.warning("cannot watch maildirsize files (%s): reading them at every request", exc.strerror)
        fd = None if self._inotify is None else self._inotify.fd
        self._reader = ReaderProcess(self.roots, fd, int(_WATCH), self._done, self._reader_exited, self.workers)
        self._reader.start(loop)
        return loop

    def _reader_exited(self) -> None:
        """The reads the reader had are lost: their requests are answered now, as unknown."""
        pending, self._pending = self._pending, {}
        self._ahead_asked = 0
        for waiting in pending.values():
            for future, then, timer in waiting.waiters:
                timer.cancel()
                if not future.done():
                    _settle(future, then, Unreadable("the maildirsize reader exited"))

    def _done(self, results: list[Result]) -> None:
        self.drain()  # changes made while they were read are seen before deciding to keep them
        for path, wd, local, live in results:
            self._settle_read(path, wd, local, live)
        self._read_ahead()

    def _settle_read(self, path: str, wd: int | None, local: bool, live: Live) -> None:
        pending = self._pending.pop(path, None)
        if pending is None:
            return
        if pending.ahead:
            self._ahead_asked -= 1
        if wd is not None:
            self._roots[wd] = path
            self._watched[path] = wd
            unchanged = pending.epoch == self._epoch and pending.generation == self._generation.get(path, 0)
            if unchanged and not isinstance(live, Unreadable):
                self._kept[path] = (live, pending.started, local)
            elif not unchanged:
                self._read_again(path)  # changed while it was read: read what it is now
        for future, then, timer in pending.waiters:
            timer.cancel()
            if not future.done():
                _settle(future, then, live)


def _expire(future: asyncio.Future[T], then: Callable[[Live], T], timeout: float) -> None:
    if not future.done():
        _settle(future, then, Unreadable(f"not read within {timeout:g}s"))


def _settle(future: asyncio.Future[T], then: Callable[[Live], T], live: Live) -> None:
    try:
        future.set_result(then(live))
    except Exception as exc:
        log.exception("cannot answer after a maildirsize read")
        future.set_exception(exc)  # the waiter sees it (and answers DUNNO) rather than hanging
