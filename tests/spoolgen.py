"""Small helpers that build spools for tests, and an independent way of counting them.

The counting helpers here deliberately share no code with ``quotagate.usage``: they walk the
spool with ``os.listdir`` + ``os.lstat`` and trust the real file sizes, never the names.
"""

from __future__ import annotations

import itertools
import mailbox
import os
import stat
import time
from email.message import EmailMessage
from pathlib import Path

_seq = itertools.count(1)

PathLike = str | bytes | os.PathLike[str]


def maildir_folder(root: PathLike, name: str | bytes = "INBOX") -> bytes:
    """Create ``cur/``, ``new/`` and ``tmp/`` of a Maildir++ folder; return its path as bytes."""
    base = os.fsencode(root)
    path = base if name in ("INBOX", b"INBOX") else os.path.join(base, b"." + os.fsencode(name))
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


def fs_folder(root: PathLike, name: str | bytes) -> bytes:
    """Create ``cur/``, ``new/`` and ``tmp/`` of a Dovecot ``LAYOUT=fs`` folder (``Archive/2024``
    is ``root/Archive/2024``); return its path as bytes."""
    path = os.path.join(os.fsencode(root), os.fsencode(name))
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


def message_bytes(size: int) -> bytes:
    """A message of exactly ``size`` bytes (at least 1)."""
    head = b"Subject: test\n\n"
    if size <= len(head):
        return b"x" * size
    return head + b"y" * (size - len(head) - 1) + b"\n"


def add_message(
    folder: PathLike,
    size: int,
    *,
    where: str = "cur",
    with_size: bool = True,
    flags: str = "2,S",
    unique: str | bytes | None = None,
    name_size: int | None = None,
) -> bytes:
    """Deliver one message file of ``size`` bytes into ``folder/cur`` or ``folder/new``.

    ``with_size`` writes ``,S=<size>`` into the name (``name_size`` overrides the value written).
    Files in ``cur/`` get the ``:<flags>`` info suffix. Returns the file's path as bytes.
    """
    if unique is None:
        n = next(_seq)
        unique = f"1700000000.M{n}P{os.getpid()}.testhost"
        if with_size:
            unique += f",S={size if name_size is None else name_size},W={size + 10}"
    name = os.fsencode(unique)
    if where == "cur":
        name += b":" + flags.encode()
    path = os.path.join(os.fsencode(folder), where.encode(), name)
    with open(path, "wb") as f:
        f.write(message_bytes(size))
    return path


def write_mbox(path: PathLike, bodies: list[str], *, crlf: bool = False) -> None:
    """Write an mbox file with Python's ``mailbox.mbox`` (which escapes body ``From `` lines)."""
    os.makedirs(os.path.dirname(os.fsdecode(path)) or ".", exist_ok=True)
    box = mailbox.mbox(os.fsdecode(path), create=True)
    try:
        box.lock()
        for i, body in enumerate(bodies):
            msg = EmailMessage()
            msg["From"] = f"sender{i}@example.net"
            msg["Subject"] = f"message {i}"
            msg.set_content(body)
            box.add(msg)
        box.flush()
    finally:
        box.unlock()
        box.close()
    if crlf:
        data = Path(os.fsdecode(path)).read_bytes()
        Path(os.fsdecode(path)).write_bytes(data.replace(b"\n", b"\r\n"))


def python_mbox_count(path: PathLike) -> int:
    """Messages in an mbox file as Python's ``mailbox`` module counts them."""
    box = mailbox.mbox(os.fsdecode(path), create=False)
    try:
        return len(box)
    finally:
        box.close()


def _regular_files(directory: bytes) -> list[tuple[bytes, int]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.startswith(b"."):
            continue
        st = os.lstat(os.path.join(directory, name))
        if stat.S_ISREG(st.st_mode):
            found.append((name, st.st_size))
    return found


def independent_maildir_count(root: PathLike) -> dict[str, tuple[int, int]]:
    """``{folder name: (bytes, messages)}`` of a Maildir++ mailbox from real file sizes.

    INBOX is the root; folders are the real (non-symlink) ``.Name`` directories directly below.
    Only regular, non-dot files in ``cur/`` and ``new/`` count. Names are shown the way
    quotagate shows undecodable bytes (``\\xNN``) and backslashes (``\\\\``), so results can be
    compared.
    """
    base = os.fsencode(root)
    folders = {"INBOX": base}
    for entry in os.listdir(base):
        if not entry.startswith(b".") or entry in (b".", b".."):
            continue
        full = os.path.join(base, entry)
        if stat.S_ISDIR(os.lstat(full).st_mode):
            shown = entry[1:].replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
            folders[shown] = full
    result = {}
    for shown, path in folders.items():
        files = [f for sub in (b"new", b"cur") for f in _regular_files(os.path.join(path, sub))]
        result[shown] = (sum(size for _, size in files), len(files))
    return result


def totals(per_folder: dict[str, tuple[int, int]]) -> tuple[int, int]:
    return sum(b for b, _ in per_folder.values()), sum(m for _, m in per_folder.values())


def backdate(root: PathLike, seconds: float = 3600) -> None:
    """Set the mtime of ``root`` and of every directory below it (not following symlinks) into the past."""
    base = os.fsencode(root)
    when = int((time.time() - seconds) * 1e9)
    for dirpath, dirnames, _files in os.walk(base, topdown=False):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.utime(full, ns=(when, when), follow_symlinks=False)
    os.utime(base, ns=(when, when))
