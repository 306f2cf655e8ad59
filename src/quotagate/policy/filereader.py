"""The process that reads maildirsize files for the daemon, and the daemon's end of it.

Why a process and not threads of the daemon: a read walks from the spool root through directory
descriptors, stats and opens the file and reads it, a dozen system calls. In a thread of the
daemon each of them lets go of the interpreter lock and then waits for the event loop to let go
of it again, so one read cost the daemon 100-150 µs of CPU (45 µs inline). Here the reads take
their own process's lock, and the daemon pays one small write and one read per file.

The two ends share a ``SOCK_SEQPACKET`` socket pair: each message is whole, in :mod:`marshal`'s
format (both ends are the same interpreter, ``sys.executable``). The reader's
:data:`quotagate.policy.files.FILE_WORKERS` threads all wait on it, so the kernel hands each
message to one idle thread, which does the read and sends its answer itself: a read of a dead NFS
mount hangs only its thread, and nothing queues behind it while another thread is idle. Before
the read, the thread puts an inotify watch on the mailbox's directory, on the daemon's own
inotify descriptor (inherited), so that a change after the read is an event the daemon sees.

- daemon to reader: ``("roots", [path, ...])`` (first, and on reload), ``("read", path, watch)``;
- reader to daemon: first ``None`` (it is up), then ``(path, wd or -1, local, live)``:
  ``local`` when the directory is on a file system of this host, where every change raises an
  inotify event (on NFS, a change made by another client raises none); ``live`` None (no
  maildirsize to go by), ``(bytes, messages, mtime)`` or a string (why it is unreadable).

The reader (:mod:`quotagate.policy.reader`) exits when the daemon's end closes, which happens
when the daemon exits, however it dies.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from quotagate.model import Usage
from quotagate.policy import reader
from quotagate.policy.liveusage import Live, Unreadable
from quotagate.usage.safefs import Roots

log = logging.getLogger(__name__)

_RESTART_SECONDS = 1.0  # a reader that keeps dying is started again at most this often

Result = tuple[str, int | None, bool, Live]


def decode_live(value: Any) -> Live:
    if value is None:
        return None
    if isinstance(value, str):
        return Unreadable(value)
    used, messages, measured_at = value
    return Usage(used, messages, measured_at, "maildirsize")


class ReaderProcess:
    """The daemon's end: starts the reader, sends it reads, and hands the answers to
    ``on_results`` on the loop (all those a wake-up finds, at once; none when a reader comes
    up). When the reader exits, ``on_exit`` is called (the reads it had are lost) and another is
    started, at most once a second."""

    def __init__(
        self,
        roots: Roots,
        inotify_fd: int | None,
        watch_mask: int,
        on_results: Callable[[list[Result]], None],
        on_exit: Callable[[], None],
        workers: int,
    ) -> None:
        self.roots = roots
        self._inotify_fd = inotify_fd
        self._watch_mask = watch_mask
        self._on_results = on_results
        self._on_exit = on_exit
        self._workers = workers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._gone: list[subprocess.Popen[bytes]] = []  # exited or exiting, not reaped yet
        self._out: deque[bytes] = deque()  # messages the socket had no room for yet
        self._started = -_RESTART_SECONDS
        self._closed = False
        self._ready = asyncio.Event()  # set once a reader said it is up

    @property
    def running(self) -> bool:
        return self._sock is not None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the reader (a fork and exec: milliseconds, on the loop). Failing to is logged;
        reads are then unreadable until the next try."""
        self._loop = loop
        self._started = loop.time()
        self._gone = [process for process in self._gone if process.poll() is None]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [theirs.fileno()] + ([self._inotify_fd] if self._inotify_fd is not None else [])
        command = [sys.executable, "-m", reader.__name__, str(theirs.fileno()), str(self._inotify_fd or -1)]
        command += [str(self._watch_mask), str(self._workers)]
        try:
            self._process = subprocess.Popen(command, pass_fds=fds, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("cannot start the maildirsize reader: %s; trying again in %gs", exc, _RESTART_SECONDS)
            ours.close()
            loop.call_later(_RESTART_SECONDS, self._restart)
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._out = deque()
        loop.add_reader(ours.fileno(), self._receive)
        self._send(("roots", list(self.roots.paths)))

    async def ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until a reader is up: whether one is."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def ask(self, path: str, watch: bool) -> None:
        """Have ``path``'s maildirsize read."""
        self._send(("read", path, watch))

    def set_roots(self, roots: Roots) -> None:
        self.roots = roots
        self._send(("roots", list(roots.paths)))

    def close(self, wait: float = 2.0) -> None:
        """Stop the reader: it sees the end of the stream and exits. Waits for that at most
        ``wait`` seconds; a reader still stuck in a read then is killed, and left."""
        self._closed = True
        self._drop()
        deadline = time.monotonic() + wait
        for process in self._gone:
            try:
                process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                process.kill()
        self._gone = []

    def replace(self) -> None:
        """Kill the reader, with whatever reads its threads are stuck in, and start another (the
        reads it had are lost, as when it exits)."""
        if self._process is not None:
            self._process.kill()
        self._lost(self._sock)

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._sock is None:
            return
        self._out.append(marshal.dumps(message))
        if len(self._out) == 1:
            self._write()

    def _write(self) -> None:
        """Send what waits, in order; what the socket has no room for (every reader thread
        stuck, and thousands of reads asked meanwhile) waits for it to drain."""
        assert self._sock is not None and self._loop is not None
        while self._out:
            try:
                self._sock.send(self._out[0])
            except BlockingIOError:
                self._loop.add_writer(self._sock.fileno(), self._write_more)
                return
            except OSError:  # dead: dealt with on a turn of its own, not inside the caller's ask()
                self._loop.call_soon(self._lost, self._sock)
                return
            self._out.popleft()

    def _write_more(self) -> None:
        assert self._sock is not None and self._loop is not None
        self._loop.remove_writer(self._sock.fileno())
        self._write()

    def _receive(self) -> None:
        assert self._sock is not None
        results: list[Result] = []
        up = False
        while True:
            try:
                message = self._sock.recv(reader.MESSAGE)
            except BlockingIOError:
                break
            except OSError:
                message = b""
            if not message:
                self._lost(self._sock)
                return
            if message == reader.READY:
                self._ready.set()
                up = True
                continue
            try:
                path, wd, local, live = marshal.loads(message)
                results.append((path, None if wd < 0 else wd, local, decode_live(live)))
            except (ValueError, TypeError, EOFError) as exc:
                log.error("the maildirsize reader sent garbage (%s): starting another", exc)
                self._lost(self._sock)
                return
        if results or up:
            self._on_results(results)

    def _drop(self) -> None:
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._process is not None:
            self._gone.append(self._process)
            self._process = None
        self._gone = [process for process in self._gone if process.poll() is None]

    def _lost(self, sock: socket.socket | None) -> None:
        """The reader at the end of ``sock`` is gone (unless another was started since)."""
        if sock is not self._sock:
            return
        self._drop()
        if self._closed:
            return
        log.error("the maildirsize reader exited: reads in flight get DUNNO; starting another")
        self._on_exit()
        assert self._loop is not None
        delay = self._started + _RESTART_SECONDS - self._loop.time()
        if delay > 0:
            self._loop.call_later(delay, self._restart)
        else:
            self._restart()

    def _restart(self) -> None:
        if not self._closed and self._sock is None and self._loop is not None:
            self.start(self._loop)
