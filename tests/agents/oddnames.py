"""The odd entries of issue 12's table (tests/integration/test_accounting.py), laid into a
Maildir that a real program then counts from scratch, for its profile to be held against.

One difference is kept on purpose: the programs follow a symlink for its size when its name
gives none; quotagate never follows a path a user controls, so it counts the link as a message
of 0 bytes. :func:`followed` is what that costs, for the tests to allow exactly that much.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_accounting import MAKERS, SIZE, TABLE, VSIZE
from tests.servers.exim import MAIL_UID
from tests.servers.mailuser import message

ODD = [pytest.param(kind, name, id=f"{kind}-{name}") for kind, name in sorted(TABLE)]


def lay(maildir: Path, kind: str, name: str) -> None:
    """An ordinary message and one odd entry in ``maildir``'s cur/, all the mail user's."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (maildir / "cur" / "1700000000.M1P1.ordinary,S=300:2,S").write_bytes(message(300))
    MAKERS[kind](maildir / "cur", name)
    for dirpath, dirnames, filenames in os.walk(maildir.parent):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(entry, MAIL_UID, MAIL_UID, follow_symlinks=False)


def followed(kind: str, name_sized: bool, virtual: bool = False) -> int:
    """The bytes a program counts and quotagate does not: a symlink's target (of ``SIZE``
    bytes, ``VSIZE`` virtual) when the program did not take the size from the link's name."""
    if kind != "symlink" or name_sized:
        return 0
    return VSIZE if virtual else SIZE
