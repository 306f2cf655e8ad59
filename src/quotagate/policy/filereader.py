"""The process that reads maildirsize files for the daemon, and the daemon's end of it.

Why a process and not threads of the daemon: a read walks from the spool root through directory
descriptors, stats and opens the file and reads it, a dozen system calls. In a thread of the
daemon each of them lets go of the interpreter lock and then waits for the event loop to let go
of it again, so one read cost the daemon 100-150 µs of CPU (45 µs inline). Here the reads take
their own process's lock, and the daemon pays one write and one read per turn of its loop,
however many reads that turn asked for or got back.

The reader does what the thread pool did: :data:`quotagate.policy.files.FILE_WORKERS` threads,
each reading one file at a time (a read of a dead NFS mount hangs only its thread), and an
inotify watch on the mailbox's directory added to the daemon's own inotify descriptor (inherited)
*before* the read, so that a change after the read is an event the daemon sees.

The two ends talk over a socket pair in frames: a 4-byte big-endian length, then a value in
:mod:`marshal`'s format (both ends are the same interpreter, ``sys.executable``):

- daemon to reader: ``("roots", [path, ...])`` (first, and on reload), ``("read", [(path,
  watch), ...])``;
- reader to daemon: ``[(path, wd or -1, local, live), ...]``: ``local`` when the directory is on
  a file system of this host, where every change raises an inotify event (on NFS, a change made
  by another client raises none); ``live`` None (no maildirsize to go by), ``(bytes, messages,
  mtime)`` or a string (why it is unreadable).

The reader exits when the daemon's end closes, which happens when the daemon exits, however it
dies.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import marshal
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from quotagate.model import Usage
from quotagate.policy.live import Live, MaildirsizeReader, Unreadable
from quotagate.usage.safefs import Roots

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
_MAX_FRAME = 64 << 20  # a frame longer than this is a broken peer, not a batch
_RECEIVE = 1 << 18
_RESTART_SECONDS = 1.0  # a reader that keeps dying is started again at most this often

# struct statfs f_type of the file systems whose every change this host's inotify sees: ext2-4,
# XFS, Btrfs, tmpfs, ZFS, F2FS, JFS, ReiserFS, bcachefs. Not NFS, CIFS, FUSE, Ceph, overlayfs...
LOCAL_FILESYSTEMS = frozenset(
    {0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x2FC12FC1, 0xF2F52010, 0x3153464A, 0x52654973, 0xCA451A4E}
)
_STATFS_BYTES = 256  # more than struct statfs takes; f_type is its first field, a long

Result = tuple[str, int | None, bool, Live]


def frame(value: Any) -> bytes:
    """``value`` (of marshal's types) as one frame."""
    data = marshal.dumps(value)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Complete frames out of a byte stream received in pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buffer += data
        offset = 0
        while len(self._buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer, offset)
            if length > _MAX_FRAME:
                raise ValueError(f"a frame of {length} bytes")
            end = offset + _LENGTH.size + length
            if end > len(self._buffer):
                break
            yield marshal.loads(self._buffer[offset + _LENGTH.size : end])
            offset = end
        del self._buffer[:offset]


def encode_live(live: Live) -> Any:
    if live is None:
        return None
    if isinstance(live, Unreadable):
        return live.reason
    return (live.bytes, live.messages, live.measured_at)


def decode_live(value: Any) -> Live:
    if value is None:
        return None
    if isinstance(value, str):
        return Unreadable(value)
    used, messages, measured_at = value
    return Usage(used, messages, measured_at, "maildirsize")


class ReaderProcess:
    """The daemon's end: starts the reader, sends the reads asked during a loop turn in one frame,
    and hands what each frame back holds to ``on_results`` on the loop. When the reader exits, ``on_exit`` is
    called (the reads it had are lost) and another is started, at most once a second."""

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
        self._asked: list[tuple[str, bool]] = []
        self._out = bytearray()
        self._frames = Frames()
        self._started = -_RESTART_SECONDS
        self._closed = False

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
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno()] + ([self._inotify_fd] if self._inotify_fd is not None else [])
        command = [sys.executable, "-m", __name__, str(theirs.fileno()), str(self._inotify_fd or -1)]
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
        self._frames = Frames()
        self._out = bytearray(frame(("roots", list(self.roots.paths))))
        loop.add_reader(ours.fileno(), self._receive)
        self._write()

    def ask(self, path: str, watch: bool) -> None:
        """Have ``path``'s maildirsize read (sent at the end of this loop turn)."""
        if not self._asked:
            assert self._loop is not None
            self._loop.call_soon(self._send_asked)
        self._asked.append((path, watch))

    def set_roots(self, roots: Roots) -> None:
        self.roots = roots
        if self._sock is not None:
            self._out += frame(("roots", list(roots.paths)))
            self._write()

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

    def _send_asked(self) -> None:
        asked, self._asked = self._asked, []
        if self._sock is not None and asked:
            self._out += frame(("read", asked))
            self._write()

    def _write(self) -> None:
        assert self._sock is not None and self._loop is not None
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        del self._out[:sent]
        if self._out:
            self._loop.add_writer(self._sock.fileno(), self._write_more)

    def _write_more(self) -> None:
        assert self._sock is not None and self._loop is not None
        self._loop.remove_writer(self._sock.fileno())
        self._write()

    def _receive(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(_RECEIVE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        try:
            batches = list(self._frames.feed(data))
        except ValueError as exc:
            log.error("the maildirsize reader sent garbage (%s): starting another", exc)
            self._lost()
            return
        for batch in batches:
            self._on_results(
                [(path, None if wd < 0 else wd, local, decode_live(live)) for path, wd, local, live in batch]
            )

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

    def _lost(self) -> None:
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


# -- the reader process -------------------------------------------------------------------------


def _add_watch(libc: ctypes.CDLL, inotify_fd: int, path: str, mask: int) -> int:
    """An inotify watch on ``path`` (blocking: a user's directory); -1 when it cannot be had."""
    if inotify_fd < 0:
        return -1
    wd: int = libc.inotify_add_watch(inotify_fd, os.fsencode(path), ctypes.c_uint32(mask))
    if wd < 0:
        code = ctypes.get_errno()
        if code != errno.ENOENT:
            log.debug("cannot watch %r: %s", path, os.strerror(code))
        return -1
    return wd


def _local(libc: ctypes.CDLL, path: str) -> bool:
    """Whether ``path`` is on a file system whose every change raises an inotify event here."""
    buffer = ctypes.create_string_buffer(_STATFS_BYTES)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        return False
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF in LOCAL_FILESYSTEMS


def _serve(sock: socket.socket, inotify_fd: int, mask: int, workers: int) -> None:
    reader = MaildirsizeReader(Roots(()))
    libc = ctypes.CDLL(None, use_errno=True)
    jobs: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
    results: queue.SimpleQueue[tuple[str, int, bool, Any]] = queue.SimpleQueue()

    def work() -> None:
        while True:
            path, watch = jobs.get()
            wd = _add_watch(libc, inotify_fd, path, mask) if watch else -1  # before the read
            local = wd >= 0 and _local(libc, path)
            results.put((path, wd, local, encode_live(reader.read(path))))

    def send() -> None:
        while True:
            batch = [results.get()]
            while True:
                try:
                    batch.append(results.get_nowait())
                except queue.Empty:
                    break
            try:
                sock.sendall(frame(batch))
            except OSError:
                return  # the daemon is gone; the main thread sees it too

    for n in range(workers):
        threading.Thread(target=work, name=f"reader-{n}", daemon=True).start()
    threading.Thread(target=send, name="sender", daemon=True).start()
    frames = Frames()
    while data := sock.recv(_RECEIVE):
        for kind, value in frames.feed(data):
            if kind == "roots":
                reader.roots = Roots(tuple(value))
            else:
                for path, watch in value:
                    jobs.put((path, watch))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="quotagate maildirsize reader: %(message)s")
    fd, inotify_fd, mask, workers = (int(arg) for arg in argv)
    with socket.socket(fileno=fd) as sock:
        try:
            _serve(sock, inotify_fd, mask, workers)
        except (OSError, ValueError) as exc:
            log.error("stopping: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
