"""What one file event in a Maildir ``cur/`` or ``new/`` does to the folder's usage. Pure.

Counted by the accounting profile's own rules (see :mod:`quotagate.accounting`), so that the
folder afterwards holds what a scan would find there. A message that arrives or leaves under a
name the profile sizes changes the folder by that size and one message; its move from new/ to
cur/ is a leave and an arrival of the same size, which cancel out. A name the profile leaves out
(a dot file, a flag such as Courier's T) changes nothing: a rename that adds the flag is a leave
alone. A name the profile does not size (the file is then stat'ed or read) cannot be counted
from the event: the caller reads the folder again.
"""

from __future__ import annotations

from quotagate.accounting import Profile


def message_delta(name: str, arrived: bool, profile: Profile) -> tuple[int, int] | None:
    """(bytes, messages) to add to the folder, or None when the folder must be read again."""
    if profile.left_out(name):
        return 0, 0
    size = profile.size_from_name(name)
    if size is None:
        return None
    return (size, 1) if arrived else (-size, -1)
