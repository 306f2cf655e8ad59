"""A read that hangs in the reader process (a user's FUSE mount under their Maildir, a dead NFS
server) holds its thread, not every read: the reader starts another thread whenever none is left
waiting, up to a bound."""

from __future__ import annotations

import marshal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from quotagate.policy import reader


@pytest.fixture
def stuck_reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[socket.socket, threading.Event]]:
    """The reader's serving loop in a thread of this process, on a socket pair; a read of a path
    with "stuck" in it hangs until the event is set."""
    release = threading.Event()

    def read(_: object, path: str, watch: object) -> tuple[Any, ...]:
        if "stuck" in path:
            release.wait()
        elif "slow" in path:
            release.wait(0.6)
        return path, -1, False, None

    monkeypatch.setattr(reader, "_read", read)
    monkeypatch.setattr(reader, "MOST_THREADS", 12)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    serving = threading.Thread(target=reader._serve, args=(theirs, -1, 0, 4), daemon=True)
    serving.start()
    ours.send(marshal.dumps(("roots", ["/"])))
    assert ours.recv(reader.MESSAGE) == reader.READY
    ours.settimeout(5)
    try:
        yield ours, release
    finally:
        release.set()
        ours.close()
        serving.join(5)
        theirs.close()


def read(sock: socket.socket, path: str) -> None:
    sock.send(marshal.dumps(("read", path, False)))


def test_reads_go_on_while_more_mailboxes_are_stuck_than_the_reader_has_threads(
    stuck_reader: tuple[socket.socket, threading.Event],
) -> None:
    sock, _ = stuck_reader
    for n in range(8):  # twice the reader's threads
        read(sock, f"/stuck/{n}")
    read(sock, "/fine")
    assert marshal.loads(sock.recv(reader.MESSAGE))[0] == "/fine"


def test_slow_reads_do_not_hold_up_the_others(stuck_reader: tuple[socket.socket, threading.Event]) -> None:
    """Reads that each end within a second still take every thread: another starts at once."""
    sock, _ = stuck_reader
    for n in range(8):
        read(sock, f"/slow/{n}")
    read(sock, "/fine")
    assert marshal.loads(sock.recv(reader.MESSAGE))[0] == "/fine"


def test_the_threads_stuck_are_bounded(stuck_reader: tuple[socket.socket, threading.Event]) -> None:
    """Past MOST_THREADS, reads wait (the daemon answers DUNNO after file_timeout) rather than a
    thread more per stuck mailbox; they are answered once the stuck reads end."""
    sock, release = stuck_reader
    for n in range(12):
        read(sock, f"/stuck/{n}")
    read(sock, "/fine")
    sock.settimeout(1)
    with pytest.raises(TimeoutError):
        sock.recv(reader.MESSAGE)
    release.set()
    sock.settimeout(5)
    answered = {marshal.loads(sock.recv(reader.MESSAGE))[0] for _ in range(13)}
    assert "/fine" in answered and len(answered) == 13
