"""Reading mbox files: bytes from the file size, messages from ``From `` separator lines."""

from __future__ import annotations

import os
import stat

from quotagate.model import FolderUsage

_CHUNK = 1 << 20
# A separator is a "From " line at the start of the file or after an empty line (LF or CRLF).
_SEPARATORS = (b"\n\nFrom ", b"\n\r\nFrom ")
_CARRY = max(len(s) for s in _SEPARATORS) - 1
_SKIPPED_SUFFIXES = (".lock", ".lck")


def count_messages(path: str, follow: bool = False) -> tuple[int, int, tuple[int, int]]:
    """Bytes, messages and the ``(mtime_ns, size)`` stamp of one mbox file.

    A symlink is followed only when ``follow`` (a mailbox root the admin pointed at).
    """
    flags = os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path) if stat.S_ISDIR(st.st_mode) else OSError(f"{path}: not a regular file")
        head = f.read(_CHUNK)
        messages = 1 if head.startswith(b"From ") else 0
        carry = b""
        chunk = head
        while chunk:
            window = carry + chunk
            # Separators wholly inside the carry were counted with the previous chunk.
            messages += sum(window.count(sep) - carry.count(sep) for sep in _SEPARATORS)
            carry = window[-_CARRY:]
            chunk = f.read(_CHUNK)
    return st.st_size, messages, (st.st_mtime_ns, st.st_size)


def read_file_folder(path: str, name: str, racy_cutoff_ns: int, follow: bool = False) -> FolderUsage:
    size, messages, file_stamp = count_messages(path, follow)
    kept = None if file_stamp[0] >= racy_cutoff_ns else file_stamp
    return FolderUsage(name, size, messages, kept)


def mbox_files(root: str) -> list[tuple[str, str]]:
    """``(folder name, path)`` of every mbox file under a directory, without following symlinks.

    Dot files and folders (``.imap``, ``.subscriptions``) and lock files are not mail.
    """
    found: list[tuple[str, str]] = []
    pending = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name.endswith(_SKIPPED_SUFFIXES):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((prefix + entry.name + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found.append((prefix + entry.name, entry.path))
    return sorted(found)


def file_stamp(path: str, follow: bool = False) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)
