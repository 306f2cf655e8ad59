"""What one file event in a Maildir ``cur/`` or ``new/`` does to the folder's usage. Pure.

A message that arrives or leaves under a name carrying ``,S=`` changes the folder by that size
and one message; its move from new/ to cur/ is a leave and an arrival of the same size, which
cancel out. Anything else (no size in the name, a dot file) cannot be counted from the event
alone: the caller reads the folder again.
"""

from __future__ import annotations

from quotagate.usage.names import size_from_name


def message_delta(name: str, arrived: bool) -> tuple[int, int] | None:
    """(bytes, messages) to add to the folder, or None when the folder must be read again."""
    if not name or name[0] == ".":
        return None
    size = size_from_name(name)
    if size is None:
        return None
    return (size, 1) if arrived else (-size, -1)
