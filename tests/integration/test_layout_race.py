"""A user swaps a GUID-named directory of their Maildir for a symlink between the two stats
``_layout_index`` makes: ``<guid>`` (lstat: a real directory) and then ``<guid>/cur``, whose
first component the kernel resolves, following the symlink the user put there meanwhile.
Root then stats a path of the user's choosing (any directory on the machine, an automount
trigger, a hung NFS mount) and the answer decides the mailbox's state."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path

from quotagate.usage import mailbox
from tests.integration.test_measure import GUID
from tests.spoolgen import add_message, maildir_folder

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _maildir_without_inbox_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A Maildir whose INBOX cur/ and new/ its user removed (mail kept in .Archive), with an empty
    real GUID-named directory and, beside it, a symlink to a root-only directory holding cur/."""
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root / ".Archive"), 500)
    (root / GUID).mkdir()  # a real directory, no cur/ or new/: not LAYOUT=index
    secret = tmp_path / "root-only"
    (secret / "cur").mkdir(parents=True)
    os.chmod(secret, 0o700)
    (root / "swap").symlink_to(secret)
    return root, secret


def test_a_user_racing_renames_gets_root_to_stat_through_their_symlink(tmp_path: Path) -> None:
    """The same with a real race: a thread exchanges the directory and the symlink (renameat2
    RENAME_EXCHANGE, as any user can on their own files) while the mailbox is measured."""
    root, _ = _maildir_without_inbox_dirs(tmp_path)
    stop = threading.Event()

    def attacker() -> None:
        while not stop.is_set():
            _exchange(root / GUID, root / "swap")

    thread = threading.Thread(target=attacker)
    thread.start()
    followed = 0
    try:
        with _dir(root) as fd:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not followed:
                for _ in range(1000):
                    followed += mailbox._layout_index(fd)
    finally:
        stop.set()
        thread.join()
    assert followed == 0, f"root stat'ed <guid>/cur through the user's symlink {followed} times"


class _dir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
