"""systemd's notify protocol (READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1, EXTEND_TIMEOUT_USEC),
without a dependency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable

MORE_TIME = 60.0
"""Seconds more to start that each EXTEND_TIMEOUT_USEC asks for, asked again every third of it."""


def notify(state: str) -> bool:
    """Tell systemd about a state change; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1: half of the unit's WatchdogSec (WATCHDOG_USEC), as
    sd_watchdog_enabled(3) advises; None when systemd watches no process, or another one."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def more_time() -> str:
    """The message asking systemd for :data:`MORE_TIME` seconds more to start."""
    return f"EXTEND_TIMEOUT_USEC={int(MORE_TIME * 1e6)}"


@contextlib.asynccontextmanager
async def asking_more_time(tell: Callable[[str], object] = notify) -> AsyncIterator[None]:
    """While the block runs, keep asking systemd for more time to start (systemd 236 and later;
    others ignore it). A first scan of a big spool, or one that waits out a hung mailbox for
    [scan] mailbox_timeout (300 s), takes longer than the units' default TimeoutStartSec (90 s):
    systemd killed the service and started it again, for ever. A loop that hangs stops asking,
    and is killed MORE_TIME later."""

    async def keep_asking() -> None:
        while True:
            tell(more_time())
            await asyncio.sleep(MORE_TIME / 3)

    task = asyncio.create_task(keep_asking())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
