"""A folder keeping its own maildirsize (Exim appendfile without quota_directory) stops
--fix-maildirsize from rewriting the root's; a busy such folder's file is 5120 bytes or more."""

from __future__ import annotations

import tempfile
from pathlib import Path

from quotagate.usage import mailbox
from quotagate.usage.safefs import Roots

TEMP = Roots.of(tempfile.gettempdir())


def test_folder_with_its_own_large_maildirsize_still_blocks_root_rewrite(tmp_path: Path) -> None:
    root = tmp_path / "box"
    for d in ("cur", "new", "tmp", ".Lists/cur", ".Lists/new", ".Lists/tmp"):
        (root / d).mkdir(parents=True)
    (root / "cur" / "1.host:2,S").write_bytes(b"x" * 100)
    (root / ".Lists" / "cur" / "2.host:2,S").write_bytes(b"y" * 50)
    # No maildirfolder in .Lists: Exim counts deliveries to it in .Lists/maildirsize.
    big = b"0S\n" + b"50 1\n" * 1100  # a line per delivery: past 5120 bytes
    assert len(big) >= 5120
    (root / ".Lists" / "maildirsize").write_bytes(big)
    stale = b"1000000S\n7 7\n"
    (root / "maildirsize").write_bytes(stale)
    usage = mailbox.measure(str(root), "maildir", None, 0, TEMP, (), "").usage
    # Before 9232241: "maildirsize not rewritten: folders Lists keep their own" and the root's
    # file left alone; now the folder's file is "unusable" and no longer counts as kept.
    assert [f.name for f in usage.own_maildirsizes] == ["Lists"]
    assert (root / "maildirsize").read_bytes() == stale
