"""Maildir++ maildirsize files: parse, definition, atomic rewrite."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.model import Limits, MaildirsizeInfo
from quotagate.usage import maildirsize, safefs
from quotagate.usage.maildirsize import FILE_NAME, definition_for, parse
from quotagate.usage.safefs import Roots
from tests.usagefs import read_maildirsize


def claims(info: MaildirsizeInfo | None) -> tuple[int, int, str] | None:
    """What a maildirsize claims: its totals and its definition line."""
    return None if info is None else (info.bytes, info.messages, info.definition)


def read_claims(root: Path) -> tuple[int, int, str] | None:
    """:func:`claims` of the maildirsize in ``root``, as the scan reads it."""
    parsed = read_maildirsize(root)
    return None if parsed is None else claims(parsed.info)


def test_definition_line_and_one_total() -> None:
    parsed = parse("524288000S,1000C\n12345 6\n")
    assert parsed.problem is None
    assert claims(parsed.info) == (12345, 6, "524288000S,1000C")


def test_lines_are_summed_with_negatives_and_blank_lines() -> None:
    text = "1000S\n  100 2\n\n250 1\n-100 -1\n   \n40  3\n"
    assert claims(parse(text).info) == (290, 5, "1000S")


def test_definition_only_means_empty() -> None:
    assert claims(parse("1000S,10C\n").info) == (0, 0, "1000S,10C")
    assert claims(parse("1000S,10C").info) == (0, 0, "1000S,10C")


def test_crlf_lines() -> None:
    assert claims(parse("5000S\r\n10 1\r\n20 1\r\n").info) == (30, 2, "5000S")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "empty"),
        ("1000S\n10 1 1\n", "line 2"),
        ("1000S\n10\n", "line 2"),
        ("1000S\n10 1\nabc 1\n", "line 3"),
        ("1000S\n10 1\n\n5 x\n", "line 4"),
        ("1000S\n1.5 1\n", "line 2"),
    ],
)
def test_malformed_files_give_no_info_and_a_problem(text: str, where: str) -> None:
    parsed = parse(text)
    assert parsed.info is None
    assert parsed.problem is not None
    assert where in parsed.problem


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(st.tuples(st.integers(-(10**9), 10**12), st.integers(-1000, 10**6)), max_size=30),
    blank_every=st.integers(min_value=2, max_value=7),
)
def test_any_list_of_lines_sums(lines: list[tuple[int, int]], blank_every: int) -> None:
    body = []
    for i, (b, m) in enumerate(lines):
        body.append(f"{b} {m}")
        if i % blank_every == 0:
            body.append("")
    parsed = parse("1S\n" + "\n".join(body) + "\n")
    assert claims(parsed.info) == (sum(b for b, _ in lines), sum(m for _, m in lines), "1S")


def test_what_dovecot_would_not_believe_gives_no_info() -> None:
    """Dovecot's maildirsize_read: a last line without its line break is left out (being
    written), NUL bytes make it count the files. (Negative totals are kept, for --fix-maildirsize
    to rewrite them: the claims rule never counts them.)"""
    assert claims(parse("1000S\n10 1\n20 1").info) == (10, 1, "1000S")
    assert parse("1000S\n10 1\n\0 1\n").problem == "holds NUL bytes"
    assert claims(parse("1000S\n10 1\n-20 -2\n").info) == (-10, -1, "1000S")


@pytest.mark.parametrize(
    ("limits", "definition"),
    [
        (Limits(524288000, 1000), "524288000S,1000C"),
        (Limits(524288000, 0), "524288000S"),
        (Limits(0, 1000), "1000C"),
        (Limits(0, 0), ""),
    ],
)
def test_definition_for(limits: Limits, definition: str) -> None:
    assert definition_for(limits) == definition


def rewrite(root: str, definition: str, bytes_: int, messages: int) -> None:
    roots = Roots.of(os.path.dirname(root))
    with safefs.opened(root, roots) as node:
        assert node is not None
        maildirsize.rewrite(node, root, roots, definition, bytes_, messages)


def test_read_missing_file_is_none(tmp_path: Path) -> None:
    assert read_maildirsize(tmp_path) is None


def test_read_existing_file(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"100S\n10 1\n5 1\n")
    assert read_claims(tmp_path) == (15, 2, "100S")


@pytest.mark.parametrize(
    "text",
    [
        f"1S\n{2**63} 1\n",
        f"1S\n{2**64} 1\n",
        f"1S\n1 {-(2**63) - 1}\n",
        f"1S\n{2**62} 1\n{2**62} 1\n",
        "1S\n" + "9" * 5000 + " 1\n",
    ],
)
def test_numbers_past_63_bits_make_the_file_unusable(text: str) -> None:
    parsed = parse(text)
    assert parsed.info is None
    assert parsed.problem is not None and "too large" in parsed.problem


def _maildir(tmp_path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir(parents=True)
    return tmp_path


def test_rewrite_refuses_a_maildir_reached_through_a_users_symlink(tmp_path: Path) -> None:
    root = _maildir(tmp_path / "bob")
    (root / FILE_NAME).write_text("10S\n0 0\n")
    (tmp_path / "zed").symlink_to("bob")
    os.chown(tmp_path / "zed", 5000, 5000, follow_symlinks=False)  # zed's own link
    with pytest.raises(PermissionError, match="symlink"):
        rewrite(str(tmp_path / "zed"), "1S", 0, 0)
    assert (root / FILE_NAME).read_text() == "10S\n0 0\n"
    rewrite(str(root), "1S", 0, 0)  # the same Maildir by its own path
    assert (root / FILE_NAME).read_text() == "1S\n0 0\n"


def test_rewrite_goes_through_the_admins_symlinks(tmp_path: Path) -> None:
    """A domain on a volume of its own, linked into the spool by root: its Maildirs are rewritten."""
    root = _maildir(tmp_path / "volume" / "bob")
    (root / FILE_NAME).write_text("10S\n0 0\n")
    (tmp_path / "example.org").symlink_to("volume")  # root's: the tests run as root
    path, roots = str(tmp_path / "example.org" / "bob"), Roots.of(str(tmp_path))
    with safefs.opened(path, roots) as node:
        assert node is not None and node.path == str(root)  # reached through the link
        maildirsize.rewrite(node, path, roots, "1S", 0, 0)
    assert (root / FILE_NAME).read_text() == "1S\n0 0\n"


def _admins_link_in_alices_home(tmp_path: Path) -> tuple[Path, Path, Roots]:
    """bob's Maildir with its maildirsize, and alice's home (hers) holding the admin's link to
    her own Maildir on a volume."""
    bob = _maildir(tmp_path / "vol" / "bob")
    (bob / FILE_NAME).write_text("99999S\n0 0\n")
    _maildir(tmp_path / "vol" / "alice")
    home = tmp_path / "d" / "alice"
    home.mkdir(parents=True)
    os.chown(home, 5000, 5000)
    (home / "Maildir").symlink_to("../../vol/alice")  # root's
    return bob, home, Roots.of(str(tmp_path))


def _rewrite_through(path: Path, roots: Roots) -> None:
    with safefs.opened(str(path), roots) as node:
        assert node is not None
        maildirsize.rewrite(node, str(path), roots, "1S", 0, 0)


def test_a_hard_link_of_the_admins_link_is_a_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only without fs.protected_hardlinks can a user link root's symlink: taken for a user's then.
    monkeypatch.setattr(safefs, "_hardlinks_protected", lambda: False)
    bob, home, roots = _admins_link_in_alices_home(tmp_path)
    (tmp_path / "d" / "bob").symlink_to(bob)  # root's, to bob's Maildir (absolute: the link is copied)
    os.unlink(home / "Maildir")
    os.link(tmp_path / "d" / "bob", home / "Maildir", follow_symlinks=False)  # without protected_hardlinks
    with pytest.raises(PermissionError, match="symlink"):
        _rewrite_through(home / "Maildir", roots)
    assert (bob / FILE_NAME).read_text() == "99999S\n0 0\n"


def test_a_link_swapped_while_it_is_read_cannot_lend_roots_owner_to_a_users_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice swaps her own link (to bob's Maildir) in for the admin's while the walk reads it,
    and the admin's back before it looks again: owner and target must come from one link."""
    bob, home, roots = _admins_link_in_alices_home(tmp_path)
    (home / "evil").symlink_to(str(bob))
    os.chown(home / "evil", 5000, 5000, follow_symlinks=False)
    readlink = os.readlink

    def racing(path: str, *, dir_fd: int | None = None) -> str:
        os.rename(home / "Maildir", home / "saved")
        os.rename(home / "evil", home / "Maildir")
        try:
            return readlink(path, dir_fd=dir_fd)
        finally:
            os.rename(home / "Maildir", home / "evil")
            os.rename(home / "saved", home / "Maildir")

    monkeypatch.setattr(os, "readlink", racing)
    with contextlib.suppress(PermissionError):  # refused, or alice's own Maildir rewritten
        _rewrite_through(home / "Maildir", roots)
    monkeypatch.undo()
    assert (bob / FILE_NAME).read_text() == "99999S\n0 0\n"


def test_rewrite_replaces_atomically_and_keeps_mode(tmp_path: Path) -> None:
    root = _maildir(tmp_path)
    target = root / FILE_NAME
    target.write_text("1000S\n10 1\n20 1\n-5 -1\n")
    os.chmod(target, 0o640)
    before = target.stat()
    with open(target, "rb") as old_reader:  # a reader holding the old file sees it whole
        rewrite(str(root), "2000S,5C", 4321, 7)
        assert old_reader.read() == b"1000S\n10 1\n20 1\n-5 -1\n"
    after = target.stat()
    assert after.st_ino != before.st_ino  # replaced by rename, not rewritten in place
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert target.read_text() == "2000S,5C\n4321 7\n"
    assert claims(parse(target.read_text()).info) == (4321, 7, "2000S,5C")
    assert os.listdir(root / "tmp") == []  # no temp file left behind
    assert sorted(os.listdir(root)) == ["cur", FILE_NAME, "new", "tmp"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o660])
def test_rewrite_keeps_any_mode_despite_umask(tmp_path: Path, mode: int) -> None:
    root = _maildir(tmp_path)
    target = root / FILE_NAME
    target.write_text("1S\n1 1\n")
    os.chmod(target, mode)
    old_umask = os.umask(0o077)
    try:
        rewrite(str(root), "1S", 2, 2)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == mode


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_rewrite_keeps_owner(tmp_path: Path) -> None:
    root = _maildir(tmp_path)
    target = root / FILE_NAME
    target.write_text("1S\n1 1\n")
    os.chown(root, 65534, 65533)  # the mailbox's owner owns its maildirsize
    os.chown(target, 65534, 65533)
    os.chmod(target, 0o600)
    rewrite(str(root), "1S", 10, 3)
    st_after = target.stat()
    assert (st_after.st_uid, st_after.st_gid) == (65534, 65533)
    assert stat.S_IMODE(st_after.st_mode) == 0o600
    assert read_claims(root) == (10, 3, "1S")


def test_rewrite_without_tmp_dir_uses_root(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("1S\n1 1\n")
    rewrite(str(tmp_path), "5S", 5, 5)
    assert os.listdir(tmp_path) == [FILE_NAME]
    assert read_claims(tmp_path) == (5, 5, "5S")


def test_rewrite_creates_a_missing_file_private(tmp_path: Path) -> None:
    root = _maildir(tmp_path)
    rewrite(str(root), "", 0, 0)
    target = root / FILE_NAME
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert read_claims(root) == (0, 0, "")


def test_rewrite_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _maildir(tmp_path)
    target = root / FILE_NAME
    target.write_text("1S\n1 1\n")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        rewrite(str(root), "1S", 99, 99)
    assert target.read_text() == "1S\n1 1\n"
    assert sorted(os.listdir(root)) == ["cur", FILE_NAME, "new", "tmp"]


def test_a_leftover_temp_file_is_removed_by_the_next_rewrite(tmp_path: Path) -> None:
    root = _maildir(tmp_path)
    (root / FILE_NAME).write_text("1S\n1 1\n")
    (root / f"{FILE_NAME}.quotagate-tmp.123.abc").write_text("half written")
    rewrite(str(root), "1S", 2, 2)
    assert sorted(os.listdir(root)) == ["cur", FILE_NAME, "new", "tmp"]


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need files of other users")
@pytest.mark.parametrize("odd", ["fifo", "symlink", "hardlink", "other owner", "directory"])
def test_an_odd_maildirsize_is_neither_read_nor_rewritten(tmp_path: Path, odd: str) -> None:
    root = _maildir(tmp_path / "alice")
    os.chown(root, 5000, 5000)
    secret = tmp_path / "root-only"
    secret.write_text("1S\n424242 7\n")
    secret.chmod(0o600)
    target = root / FILE_NAME
    if odd == "fifo":
        os.mkfifo(target)
    elif odd == "symlink":
        target.symlink_to(secret)
    elif odd == "hardlink":
        os.chown(secret, 5000, 5000)  # even the owner's own file: a second link is not trusted
        os.link(secret, target)
    elif odd == "other owner":
        target.write_text("1S\n424242 7\n")
    else:
        target.mkdir()
    parsed = read_maildirsize(root, owner=5000)
    assert parsed is not None and parsed.info is None and parsed.problem
    assert "424242" not in parsed.problem
    with pytest.raises(OSError):
        rewrite(str(root), "1S", 1, 1)
    assert secret.read_text() == "1S\n424242 7\n"
    assert not stat.S_ISREG(os.lstat(target).st_mode) or odd in ("hardlink", "other owner")


def test_an_invalid_definition_is_never_written(tmp_path: Path) -> None:
    root = _maildir(tmp_path)
    with pytest.raises(ValueError, match="definition"):
        rewrite(str(root), "1S\n99999 1", 0, 0)
    assert not (root / FILE_NAME).exists()


def test_what_the_agents_look_at_before_they_believe_it(tmp_path: Path) -> None:
    """Size lines, the file's length and its mtime: what Dovecot, Courier and Exim weigh (see
    quotagate.accounting.enforced)."""
    (tmp_path / "maildirsize").write_text("100S\n10 1\n\n5 1\n")
    os.utime(tmp_path / "maildirsize", (1_000_000, 1_000_000))
    parsed = read_maildirsize(tmp_path)
    assert parsed is not None and parsed.info is not None
    assert (parsed.info.size_lines, parsed.info.file_bytes, parsed.info.changed_at) == (2, 15, 1_000_000)
