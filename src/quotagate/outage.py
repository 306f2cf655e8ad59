"""Telling a vanished spool from an empty one.

A missing or unmounted spool root, or many mailboxes gone at once (from the disk, or from the
directory: a bad LDAP filter or an emptied table), is far more likely an outage than users
deleting their mail. Read as "0 bytes everywhere" it would clear every over-quota flag and let
every full mailbox take mail again, silently. So a scan (or a watch flush) that sees such
evidence changes nothing and says why; an admin who knows better overrides it once
(``quotagate scan --force``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from decimal import Decimal

from quotagate import bounded
from quotagate.config import SpoolConfig
from quotagate.model import Format, Reading

# However small the site, one mailbox gone is its owner's doing (or one bad path), never an
# outage: a five-mailbox site must not stop scanning because one user was deleted. Two or more
# gone at once, beyond [scan] max_vanished, are.
MIN_VANISHED = 2


class Outage(Exception):
    """Evidence that the spool or the directory vanished: the message says what was seen."""


def root_problem(spool: SpoolConfig, timeout: float) -> str | None:
    """Why ``[spool] root`` cannot be read as the spool (missing, not a directory, not mounted
    when ``require_mount`` asks for a mount point, not answering within ``timeout`` seconds, as
    a dead NFS mount does), or None when it can."""
    try:
        return bounded.call(lambda: _inspect_root(spool), timeout)
    except TimeoutError:
        return f"spool root {spool.root} did not answer within {timeout:g} s"


def _inspect_root(spool: SpoolConfig) -> str | None:
    root = spool.root
    try:
        st = os.stat(root)
    except OSError as exc:
        return f"spool root {root}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"spool root {root} is not a directory"
    if spool.require_mount and not os.path.ismount(root):
        return f"spool root {root} is not a mount point (spool.require_mount is set)"
    return None


def was_measured(r: Reading) -> bool:
    """A real measurement of something on disk: the only kind whose disappearance means anything."""
    return r.usage.known and r.usage.format is not Format.MISSING


def found_before(r: Reading | None, where: str) -> bool:
    """Whether the last reading found the mailbox on disk at ``where`` (where it is looked for
    now), or could not tell (unknown): then a directory above it gone missing is an outage (an
    unmounted per-domain volume) to keep the mailbox unknown for, never a mailbox not created
    yet. One the admin gave a new path is new there: missing until its first delivery."""
    return r is not None and r.path == where and not (r.usage.known and r.usage.format is Format.MISSING)


def vanished(previous: Mapping[str, Reading], current: Mapping[str, Reading]) -> tuple[list[str], list[str]]:
    """Mailboxes measured before that are gone now: (left the directory, missing on disk).

    ``current`` holds a reading for every mailbox now in the directory (enabled); one found as
    ``missing`` there, unreadable or not answering included, counts as gone from the disk.
    """
    left, missing = [], []
    for address, before in previous.items():
        if not was_measured(before):
            continue
        now = current.get(address)
        if now is None:
            left.append(address)
        elif now.usage.format is Format.MISSING:
            missing.append(address)
    return sorted(left), sorted(missing)


def vanished_problem(previous: Mapping[str, Reading], current: Mapping[str, Reading], max_share: Decimal) -> str | None:
    """Why ``current`` looks like an outage next to ``previous``, or None.

    An outage: at least :data:`MIN_VANISHED` mailboxes gone, and more than ``max_share`` of those
    measured before.
    """
    return _problem(*vanished(previous, current), previous, max_share)


def left_problem(previous: Mapping[str, Reading], leaving: Iterable[str], max_share: Decimal) -> str | None:
    """:func:`vanished_problem` for a directory that lost only the mailboxes ``leaving`` since
    ``previous`` (none of the rest gone from the disk): it goes through every mailbox only when
    enough left to be an outage, not for each one removed."""
    left = sorted(a for a in set(leaving) if (r := previous.get(a)) is not None and was_measured(r))
    return _problem(left, [], previous, max_share)


def _problem(left: list[str], missing: list[str], previous: Mapping[str, Reading], max_share: Decimal) -> str | None:
    """The outage message, or None. Measured mailboxes are counted only until they are enough for
    ``gone`` to be a small share: a refresh that lost a few of 200,000 mailboxes stops after a few
    dozen, rather than holding the daemon's loop 35 ms for the whole count."""
    gone = len(left) + len(missing)
    if gone < MIN_VANISHED:
        return None
    base = 0
    for r in previous.values():
        if was_measured(r):
            base += 1
            if gone <= max_share * base:
                return None
    return (
        f"{gone} of {base} measured mailboxes vanished ({len(left)} from the directory, {len(missing)} "
        f"from the disk), more than scan.max_vanished ({float(max_share * 100):g}%)"
    )
