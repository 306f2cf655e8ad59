"""The control socket's path at start: what root does to whatever it finds there. As for the
policy's unix sockets (tests/policy/test_socket_race.py), only a dead daemon's socket is replaced,
the mode is never set through a path another user can redirect, and a socket that does not
accept cannot hold up the start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from quotagate.policy import control
from quotagate.policy.reservations import Reservations
from tests.policy.conftest import run
from tests.policy.test_socket_race import attackers_ground

NOBODY = 65534


async def _start_and_stop(path: Path) -> None:
    server = await control.serve(path, Reservations(600))
    server.close()
    await server.wait_closed()


@pytest.mark.skipif(os.geteuid() != 0, reason="the file must belong to another user")
def test_a_regular_file_at_the_control_socket_path_is_not_deleted(short_tmp: Path) -> None:
    """Scenario: [policy] control_socket names a path where a regular file is (another user's
    file in a directory that user owns, or simply a path mistyped for a file of the admin's, such
    as the store or the config). The daemon (root) starts.
    Expected: the file is left alone and the control socket is not set up there (as the policy
    listener does for a unix socket path that is not a socket: "move it away"). Connecting to a
    regular file is refused as connecting to a dead daemon's socket is: that alone told them
    apart, and root unlinked the file."""
    short_tmp.chmod(0o755)
    owned = short_tmp / "users"
    owned.mkdir(mode=0o755)
    os.chown(owned, NOBODY, NOBODY)
    path = owned / "control.sock"
    path.write_text("a file of nobody's, not a socket\n")
    os.chown(path, NOBODY, NOBODY)

    with contextlib.suppress(OSError, control.ControlError):
        run(_start_and_stop(path))

    assert path.exists() and not stat.S_ISSOCK(path.lstat().st_mode), "root deleted a regular file that was no socket"
    assert path.read_text() == "a file of nobody's, not a socket\n"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the directory must belong to another user")
def test_the_control_socket_mode_is_never_set_on_what_the_directory_owner_swaps_in(short_tmp: Path) -> None:
    """Scenario: control_socket in a directory another user owns (here: nobody), who watches it
    with inotify and renames a symlink to a root-owned file (mode 0644, standing for e.g.
    /etc/passwd) over the socket as soon as it appears. The daemon starts, up to 1000 times.
    Expected: the root-owned file keeps its mode 0644: the socket's mode is set on the socket
    bound, never through a path the directory's owner can redirect (as listeners._bind_privately
    does for the policy socket). A chmod by path after the bind followed the swapped-in symlink
    within a hundred starts or so."""
    swap, private = attackers_ground(short_tmp)
    victim = short_tmp / "passwd"  # a stand-in for /etc/passwd: root's, readable by all
    victim.write_text("root:x:0:0:root:/root:/bin/bash\n")
    victim.chmod(0o644)
    path = private / "control.sock"

    attacker = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", str(swap), str(private), "control.sock", str(victim)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def starts() -> tuple[int, str | None]:
        deadline = time.monotonic() + 8
        for attempt in range(1, 1001):
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(OSError, control.ControlError):
                await _start_and_stop(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # the admin clears the way for the next start
            mode = stat.S_IMODE(victim.stat().st_mode)
            if mode != 0o644:
                return attempt, oct(mode)
        return attempt, None

    try:
        time.sleep(0.3)
        assert attacker.poll() is None, "the attacker did not start"
        attempts, changed = asyncio.run(starts())
        assert changed is None, f"root chmodded the file the symlink led to, at start {attempts}: mode {changed}"
    finally:
        attacker.terminate()
        attacker.wait(timeout=10)


def test_a_socket_with_a_full_backlog_at_the_control_path_does_not_hang_the_start(short_tmp: Path) -> None:
    """Scenario: at [policy] control_socket there is a listening socket whose owner never accepts
    and whose backlog is full (a wedged earlier daemon, or another user's socket in a directory
    that user owns). The daemon starts and sets up its control socket.
    Expected: control.serve() gives up within a few seconds (the policy listener's own probe,
    listeners._remove_stale_socket, uses a 1 s timeout and takes a full backlog for "someone
    listens"); the daemon then runs without a control socket. A blocking connect() without a
    timeout waited for a free slot forever, on the event loop, after the policy sockets were bound
    and before READY=1: the daemon answered nobody until systemd's start timeout killed it."""
    path = short_tmp / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    filling = []
    while True:  # fill its backlog
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(str(path))
        except BlockingIOError:
            client.close()
            break
        filling.append(client)

    outcome: list[object] = []

    def start() -> None:
        try:
            asyncio.run(_start_and_stop(path))
            outcome.append("served")
        except (OSError, control.ControlError) as exc:
            outcome.append(exc)

    starting = threading.Thread(target=start, daemon=True)
    started = time.monotonic()
    starting.start()
    starting.join(5)
    hung = starting.is_alive()
    waited = time.monotonic() - started
    listener.close()  # lets a hung connect() end, so the thread does not outlive the test
    for client in filling:
        client.close()
    starting.join(10)
    assert not hung, f"control.serve() still blocked after {waited:.1f}s on a socket whose backlog is full"
