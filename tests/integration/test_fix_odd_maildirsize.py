"""--fix-maildirsize on maildirsize files the commit now reads as unusable."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from quotagate.model import MailboxUsage
from quotagate.usage import mailbox
from quotagate.usage.safefs import Roots

TEMP = Roots.of(tempfile.gettempdir())


def _maildir(tmp_path: Path, content: bytes) -> Path:
    root = tmp_path / "box"
    for d in ("cur", "new", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "cur" / "1.host:2,S").write_bytes(b"x" * 100)
    (root / "maildirsize").write_bytes(content)
    return root


def _fix(root: Path) -> MailboxUsage:
    return mailbox.measure(str(root), "maildir", None, 0, TEMP, (), "").usage


@pytest.mark.parametrize(
    "content",
    [
        # Dovecot appends a line per delivery and recounts only when it next reads 5120+ bytes:
        # a file of this size is an everyday state of a busy mailbox.
        b"1000000S,1000C\n" + b"100 1\n" * 1000,
        # negative totals (a counting bug, or expunges logged after a manual rewrite)
        b"1000000S,1000C\n100 1\n-500 -3\n",
    ],
    ids=["5120-bytes-or-more", "negative-totals"],
)
def test_fix_maildirsize_still_rewrites_untrusted_file(tmp_path: Path, content: bytes) -> None:
    root = _maildir(tmp_path, content)
    usage = _fix(root)
    text = (root / "maildirsize").read_bytes()
    # Before 9232241 the file was rewritten, keeping its quota definition: compact and right.
    assert text == b"1000000S,1000C\n100 1\n", text[:80]
    assert usage.maildirsize is not None and usage.maildirsize.rewritten
