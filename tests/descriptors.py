"""What this process holds open, for tests that a store or a watch lets go of what it opened."""

from __future__ import annotations

import os
from pathlib import Path

INOTIFY = "anon_inode:inotify"


def held(target: str | Path) -> int:
    """How many of this process's descriptors are ``target``: a file's path, or :data:`INOTIFY`."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor listdir itself used, closed since
            continue
    return links.count(str(target))
