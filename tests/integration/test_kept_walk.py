"""Walking to many mailboxes through the directories kept open on the way (an unchanged scan)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quotagate.usage import safefs
from quotagate.usage.mailbox import measure, unchanged, unchanged_each
from quotagate.usage.safefs import Escape, Roots
from tests.spoolgen import add_message, backdate, maildir_folder


@pytest.fixture
def kept() -> Iterator[dict[str, int]]:
    descriptors: dict[str, int] = {}
    yield descriptors
    for fd in descriptors.values():
        os.close(fd)


def spool(tmp_path: Path, *mailboxes: str) -> Path:
    root = tmp_path / "spool"
    for relative in mailboxes:
        (root / relative / "cur").mkdir(parents=True)
    return root


def identity(node: safefs.Node | None) -> tuple[int, int]:
    assert node is not None
    try:
        return node.st.st_dev, node.st.st_ino
    finally:
        node.close()


def test_mailboxes_of_one_domain_are_reached_through_the_directories_kept(
    tmp_path: Path, kept: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = spool(tmp_path, "example.com/alice/Maildir", "example.com/bob/Maildir")
    roots = Roots.of(root)
    paths = [str(root / "example.com" / name / "Maildir") for name in ("alice", "bob")]
    alone = [identity(safefs.open_node(path, roots)) for path in paths]

    opened: list[Any] = []
    real_open = os.open

    def counting(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting)
    assert identity(safefs.open_node(paths[0], roots, kept)) == alone[0]
    assert opened == [str(root), "example.com", "alice", "Maildir"]
    opened.clear()
    assert identity(safefs.open_node(paths[1], roots, kept)) == alone[1]
    assert opened == ["bob", "Maildir"]  # the root and the domain were kept
    assert set(kept) == {str(root), str(root / "example.com"), *(str(Path(p).parent) for p in paths)}


def test_a_kept_walk_follows_symlinks_as_one_that_keeps_nothing(tmp_path: Path, kept: dict[str, int]) -> None:
    root = spool(tmp_path, "storage/alice/Maildir", "example.com/bob/Maildir")
    (root / "example.com" / "alice").symlink_to("../storage/alice")
    (root / "example.com" / "mallory").symlink_to("/etc")
    roots = Roots.of(root)
    bob, alice = (str(root / "example.com" / name / "Maildir") for name in ("bob", "alice"))

    assert identity(safefs.open_node(bob, roots, kept)) == identity(safefs.open_node(bob, roots))
    assert identity(safefs.open_node(alice, roots, kept)) == identity(safefs.open_node(alice, roots))
    assert safefs.open_node(str(root / "example.com" / "carol" / "Maildir"), roots, kept) is None
    with pytest.raises(Escape):
        safefs.open_node(str(root / "example.com" / "mallory" / "Maildir"), roots, kept)
    (root / "example.com" / "dave").write_text("a file, not a home")
    with pytest.raises(NotADirectoryError):
        safefs.open_node(str(root / "example.com" / "dave" / "Maildir"), roots, kept)


def test_a_kept_walk_leaves_open_only_what_it_kept(tmp_path: Path, kept: dict[str, int]) -> None:
    root = spool(tmp_path, "example.com/alice/Maildir")
    (root / "example.com" / "loop").symlink_to("loop")
    roots = Roots.of(root)
    before = len(os.listdir("/proc/self/fd"))
    identity(safefs.open_node(str(root / "example.com" / "alice" / "Maildir"), roots, kept))
    with pytest.raises(OSError) as raised:
        safefs.open_node(str(root / "example.com" / "loop" / "Maildir"), roots, kept)
    assert raised.value.errno == errno.ELOOP
    assert safefs.open_node(str(root / "example.com" / "nobody" / "Maildir"), roots, kept) is None
    assert len(os.listdir("/proc/self/fd")) == before + len(kept)


def test_looking_at_many_mailboxes_answers_as_one_by_one_and_leaves_nothing_open(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    roots = Roots.of(root)
    homes = [root / f"d{i % 3}" / f"u{i}" / "Maildir" for i in range(150)]  # past the descriptors kept at once
    for home in homes:
        add_message(maildir_folder(home), 100)
        add_message(maildir_folder(home, "Sent"), 100)
    backdate(root)
    looks = [(str(home), measure(str(home), "auto", None, time.time_ns(), roots, None, "").usage) for home in homes]
    add_message(homes[7] / ".Sent", 5, where="new")
    before = len(os.listdir("/proc/self/fd"))
    same = unchanged_each(looks, roots)
    assert len(os.listdir("/proc/self/fd")) == before
    assert same == [unchanged(home, usage, roots) for home, usage in looks]
    assert same.count(False) == 1 and not same[7]


def test_a_deep_tree_keeps_no_more_than_the_cap_open(tmp_path: Path, kept: dict[str, int]) -> None:
    # Its owner points the Maildir down a tree deeper than the descriptors a look may keep.
    root = tmp_path / "spool"
    home = root / "example.com" / "mallory"
    deep = home / "/".join(["a"] * (safefs.KEPT_MAX + 50))
    (deep / "M" / "cur").mkdir(parents=True)
    (home / "Maildir").symlink_to(deep.relative_to(home) / "M")
    before = len(os.listdir("/proc/self/fd"))
    identity(safefs.open_node(str(home / "Maildir"), Roots.of(root), kept))
    assert len(kept) == safefs.KEPT_MAX
    assert len(os.listdir("/proc/self/fd")) == before + safefs.KEPT_MAX
