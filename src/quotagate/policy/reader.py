"""The maildirsize reader process (``python -m quotagate.policy.reader``), started by the daemon.

See :mod:`quotagate.policy.filereader` for why it exists and what the two ends say. It imports
only what a read needs, so that it is ready a moment after the daemon starts it.
"""

from __future__ import annotations

import ctypes
import logging
import marshal
import os
import signal
import socket
import sys
import threading
from typing import Any

from quotagate.policy.liveusage import Live, MaildirsizeReader, Unreadable
from quotagate.usage.safefs import Roots

log = logging.getLogger(__name__)

MESSAGE = 1 << 16  # bytes: more than any message (a path is at most PATH_MAX)
READY = marshal.dumps(None)  # the first message: the reader is up

# struct statfs f_type of the file systems whose every change this host's inotify sees: ext2-4,
# XFS, Btrfs, tmpfs, ZFS, F2FS, JFS, ReiserFS, bcachefs. Not NFS, CIFS, FUSE, Ceph, overlayfs...
LOCAL_FILESYSTEMS = frozenset(
    {0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x2FC12FC1, 0xF2F52010, 0x3153464A, 0x52654973, 0xCA451A4E}
)
_STATFS_BYTES = 256  # more than struct statfs takes; f_type is its first field, a long
# A read that hangs (a user's FUSE mount under their Maildir, a dead NFS server) holds its thread:
# whenever no thread is left waiting for a read, another one starts, up to MOST_THREADS in all, so
# that a few users' slow or stuck mailboxes cannot hold up every read (the daemon asks one read
# at a time per mailbox, and starts a new reader when many hang). Threads stay: those waiting cost
# nothing, as the kernel wakes only one of them per message.
MOST_THREADS = 64


def encode_live(live: Live) -> Any:
    if live is None:
        return None
    if isinstance(live, Unreadable):
        return live.reason
    return (live.bytes, live.messages, live.measured_at)


def _add_watch(libc: ctypes.CDLL, inotify_fd: int, fd: int, mask: int, path: str) -> int:
    """An inotify watch on the directory open at ``fd`` (named through /proc: the directory
    itself, never what ``path`` leads to by now); -1 when it cannot be had."""
    if inotify_fd < 0:
        return -1
    wd: int = libc.inotify_add_watch(inotify_fd, f"/proc/self/fd/{fd}".encode(), ctypes.c_uint32(mask))
    if wd < 0:
        log.debug("cannot watch %r: %s", path, os.strerror(ctypes.get_errno()))
        return -1
    return wd


def _local(libc: ctypes.CDLL, fd: int) -> bool:
    """Whether the directory open at ``fd`` is on a file system whose every change raises an
    inotify event here."""
    buffer = ctypes.create_string_buffer(_STATFS_BYTES)
    if libc.fstatfs(fd, buffer) != 0:
        return False
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF in LOCAL_FILESYSTEMS


def _read(reader: MaildirsizeReader, path: str, watch: tuple[ctypes.CDLL, int, int] | None) -> tuple[Any, ...]:
    """The answer to one read: the path, the watch on the directory read (added before the read:
    a change after it is an event) or -1, whether its file system raises every event, the value."""
    found = [-1, False]

    def opened(fd: int) -> None:
        if watch is not None:
            libc, inotify_fd, mask = watch
            found[0] = _add_watch(libc, inotify_fd, fd, mask, path)
            found[1] = found[0] >= 0 and _local(libc, fd)

    live = reader.read(path, opened)
    return path, found[0], found[1], encode_live(live)


def _serve(sock: socket.socket, inotify_fd: int, mask: int, workers: int) -> None:
    """Answer reads until the daemon's end closes (seen by any thread). The first message, the
    roots, is taken before any thread reads: no read may overtake it. A later one (a reload) may
    be overtaken by the reads already on their way."""
    kind, roots = marshal.loads(sock.recv(MESSAGE))
    if kind != "roots":
        raise ValueError(f"the first message is {kind!r}, not the roots")
    reader = MaildirsizeReader(Roots(tuple(roots)))
    libc = ctypes.CDLL(None, use_errno=True)
    ended = threading.Event()
    lock = threading.Lock()
    threads = waiting = 0

    def start() -> None:  # under lock
        nonlocal threads
        threads += 1
        threading.Thread(target=work, name=f"reader-{threads}", daemon=True).start()

    def work() -> None:
        nonlocal waiting
        try:
            while True:
                with lock:
                    waiting += 1
                message = sock.recv(MESSAGE)
                if not message:
                    break
                with lock:
                    waiting -= 1
                    if not waiting and threads < MOST_THREADS:
                        start()
                request = marshal.loads(message)
                if request[0] == "roots":
                    reader.roots = Roots(tuple(request[1]))
                    continue
                _, path, watch = request
                sock.send(marshal.dumps(_read(reader, path, (libc, inotify_fd, mask) if watch else None)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon is gone (stopping): so is its reader, quietly
        except (OSError, ValueError, EOFError) as exc:
            if not ended.is_set():  # not the socket closed as the process ends
                log.error("stopping: %s", exc)
        finally:
            ended.set()  # whatever ended this thread ends the reader: the daemon starts another

    with lock:
        for _ in range(workers):
            start()
    sock.send(READY)
    ended.wait()  # threads stuck in a read do not keep the process


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="quotagate maildirsize reader: %(message)s")
    # The daemon ends its reader by closing their socket. A stop of the whole unit (systemd's
    # SIGTERM to every process of it) must not end the reader first: the daemon would take it
    # for a crash, log an error and start another while it stops.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    fd, inotify_fd, mask, workers = (int(arg) for arg in argv)
    with socket.socket(fileno=fd) as sock:
        try:
            _serve(sock, inotify_fd, mask, workers)
        except (OSError, ValueError, EOFError) as exc:  # the daemon gone, or not speaking our way
            log.error("stopping: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
