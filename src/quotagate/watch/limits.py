"""Whether inotify can watch the whole spool, before trying (and failing half-way)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
# Other programs of the same user hold watches too: leave them a share.
_HEADROOM = 0.9


@dataclass(frozen=True)
class Plan:
    mode: str  # "inotify" or "poll"
    reason: str


def plan(needed: int, limit: int | None, requested: str = "auto") -> Plan:
    """Use inotify when asked to, or in "auto" mode when the watches fit under the limit."""
    if requested == "poll":
        return Plan("poll", "watch.mode = poll")
    if requested == "inotify" or limit is None:
        return Plan("inotify", "watch.mode = inotify" if requested == "inotify" else "no limit known")
    if needed <= limit * _HEADROOM:
        return Plan("inotify", f"{needed} watches fit under fs.inotify.max_user_watches = {limit}")
    return Plan(
        "poll",
        f"{needed} watches needed but fs.inotify.max_user_watches = {limit}: polling folder mtimes instead "
        f"(raise it, e.g. sysctl fs.inotify.max_user_watches={max(needed * 2, 8192)})",
    )


def current_limit(path: Path = MAX_WATCHES) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
