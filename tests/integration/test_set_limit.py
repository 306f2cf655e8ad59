"""``scan --fix-maildirsize --set-limit``: the definition line written from quotagate's limits.

Without ``--set-limit`` a fix keeps the file's own definition (Courier, and Dovecot with ``?:``
rules, take the limit from it); with it the admin asks for quotagate's limits to be the ones
enforced, and a Maildir without a maildirsize gets one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from quotagate.cli import main
from quotagate.model import Limits
from tests.integration.scanenv import Env
from tests.present import present
from tests.spoolgen import add_message, maildir_folder
from tests.usagefs import read_maildirsize


def _two_messages(root: Path) -> None:
    add_message(maildir_folder(root), 1000)
    add_message(maildir_folder(root, "Sent"), 300)


def _file(root: Path) -> tuple[str, int, int]:
    info = present(present(read_maildirsize(root)).info)
    return info.definition, info.bytes, info.messages


def test_set_limit_writes_the_mailbox_limits_and_keeps_the_counts(env: Env) -> None:
    root = env.maildir("u")
    _two_messages(root)
    (root / "maildirsize").write_text("1000000S,500C\n1300 2\n")  # counts agree, limit differs
    os.chmod(root / "maildirsize", 0o640)
    address = env.add("u", Limits(2048000, 100))

    plain = env.scan(fix_maildirsize=True)
    assert plain.maildirsize_fixed == [] and plain.maildirsize_mismatches == []
    assert _file(root) == ("1000000S,500C", 1300, 2)

    result = env.scan(fix_maildirsize=True, set_limit=True)
    assert result.maildirsize_fixed == [address]
    assert _file(root) == ("2048000S,100C", 1300, 2)
    assert stat.S_IMODE((root / "maildirsize").stat().st_mode) == 0o640
    stored = present(present(env.store.reading(address)).usage.maildirsize)
    assert (stored.definition, stored.bytes, stored.messages) == ("2048000S,100C", 1300, 2)

    again = env.scan(fix_maildirsize=True, set_limit=True)
    assert again.maildirsize_fixed == [] and again.maildirsize_mismatches == []


def test_set_limit_fixes_counts_and_limit_together(env: Env) -> None:
    root = env.maildir("u")
    _two_messages(root)
    (root / "maildirsize").write_text("5S\n1 1\n")
    env.add("u", Limits(0, 50))
    env.scan(fix_maildirsize=True, set_limit=True)
    assert _file(root) == ("50C", 1300, 2)


def test_a_missing_maildirsize_gets_the_mailbox_limits_only_with_set_limit(env: Env) -> None:
    root = env.maildir("u")
    _two_messages(root)
    address = env.add("u", Limits(4096, 10))
    env.scan(fix_maildirsize=True)
    assert not (root / "maildirsize").exists()

    result = env.scan(fix_maildirsize=True, set_limit=True)
    assert result.maildirsize_fixed == [address]
    assert _file(root) == ("4096S,10C", 1300, 2)
    made = (root / "maildirsize").stat()
    assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (root.stat().st_uid, 0o600)
    assert present(env.store.reading(address)).usage.maildirsize is not None


def test_an_unlimited_mailbox_keeps_its_file_and_gets_none(env: Env) -> None:
    kept, bare = env.maildir("kept"), env.maildir("bare")
    _two_messages(kept)
    _two_messages(bare)
    (kept / "maildirsize").write_text("777S\n1 1\n")
    env.add("kept", Limits())
    env.add("bare", Limits())
    env.scan(fix_maildirsize=True, set_limit=True)
    assert _file(kept) == ("777S", 1300, 2)  # counts fixed, the limit is not quotagate's to give
    assert not (bare / "maildirsize").exists()


def test_set_limit_needs_fix_maildirsize(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "{env.config.store.url}"\n[spool]\nroot = "{env.spool}"\n')
    assert main(["--config", str(config), "scan", "--set-limit"]) == 2
