"""systemd's notify protocol (READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1), without a dependency."""

from __future__ import annotations

import os
import socket


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
