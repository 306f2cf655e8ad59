"""Reading Maildir and Maildir++ folders: ``cur/`` and ``new/`` only, never ``tmp/``."""

from __future__ import annotations

import logging
import os
import stat

from quotagate.model import FolderUsage
from quotagate.usage.names import size_from_name, unique_part

log = logging.getLogger(__name__)

INBOX = "INBOX"
_RETRIES = 3
_MISSING = -1

Stamp = tuple[int, int]


def folder_path(root: str, name: str) -> str:
    """Where a Maildir++ folder lives: the root for INBOX, ``root/.Name`` otherwise."""
    return root if name == INBOX else os.path.join(root, "." + name)


def folder_names(root: str) -> list[str]:
    """INBOX and every Maildir++ folder (``.Sent``, ``.Archive.2024``) under ``root``.

    Symlinked folders are not followed.
    """
    names = [INBOX]
    with os.scandir(root) as entries:
        for entry in entries:
            n = entry.name
            if n.startswith(".") and n not in (".", "..") and entry.is_dir(follow_symlinks=False):
                names.append(n[1:])
    return names


def _mtime(path: str) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _MISSING
    return st.st_mtime_ns if stat.S_ISDIR(st.st_mode) else _MISSING


def stamp(path: str) -> Stamp:
    """The mtimes of a folder's ``cur/`` and ``new/`` (-1 when missing): unchanged means unchanged mail."""
    return (_mtime(os.path.join(path, "cur")), _mtime(os.path.join(path, "new")))


def _read_dir(path: str, skip: frozenset[str] | set[str]) -> tuple[int, int, set[str]]:
    """Bytes, messages and unique names of the message files in one of cur/ or new/.

    Names whose unique part is in ``skip`` were already counted (moved from new/ to cur/ while
    we read). Dot files are not messages. Files without a usable ``S=`` cost one ``lstat``.
    """
    total = count = 0
    seen: set[str] = set()
    try:
        entries = os.scandir(path)
    except FileNotFoundError:
        return 0, 0, seen
    with entries:
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            if skip and unique_part(name) in skip:
                continue
            size = size_from_name(name)
            if size is None:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted or moved since listed
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                size = st.st_size
            elif not entry.is_file(follow_symlinks=False):
                continue
            total += size
            count += 1
            seen.add(unique_part(name))
    return total, count, seen


def read_folder(path: str, name: str, racy_cutoff_ns: int) -> FolderUsage:
    """Measure one folder; re-read it if ``cur/`` or ``new/`` changed while it was read.

    ``new/`` is read before ``cur/`` and messages are matched by their unique name, so mail
    moving from new/ to cur/ meanwhile is counted exactly once. A stamp newer than
    ``racy_cutoff_ns`` is not kept, so the next incremental scan reads the folder again.
    """
    before = stamp(path)
    for _attempt in range(_RETRIES):
        new_bytes, new_count, new_names = _read_dir(os.path.join(path, "new"), frozenset())
        cur_bytes, cur_count, _ = _read_dir(os.path.join(path, "cur"), new_names)
        after = stamp(path)
        if after == before:
            break
        before = after
    else:
        log.info("folder %s kept changing while read; using the last reading", path)
    kept = None if max(after) >= racy_cutoff_ns else after
    return FolderUsage(name, new_bytes + cur_bytes, new_count + cur_count, kept)
