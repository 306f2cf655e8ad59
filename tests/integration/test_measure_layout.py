"""Dovecot's ``LAYOUT=fs`` Maildirs, and folders, cur/ or new/ a user swapped for symlinks.

Folders of ``LAYOUT=fs`` are plain sub-directories, named as Dovecot shows them (``Archive/2024``).
A symlink is never followed (its owner could point it anywhere), but it is never silent either:
the mailbox is measured without it and says so (``MailboxUsage.warning``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from quotagate import report
from quotagate.misread import layout_hint
from quotagate.model import Limits, MailboxUsage, Reading, State
from quotagate.store.rows import USAGE_COLUMNS, reading, usage_row
from quotagate.text import printable
from quotagate.usage import mailbox, maildir
from quotagate.usage.maildir import Layout
from quotagate.usage.safefs import Roots
from tests.integration.scanenv import Env
from tests.present import present
from tests.spoolgen import add_message, backdate, fs_folder, maildir_folder

TEMP = Roots.of(tempfile.gettempdir())


def measure(
    root: Path, layout: Layout = "fs", previous: MailboxUsage | None = None, racy_cutoff_ns: int = 0
) -> MailboxUsage:
    reuse = None if previous is None else mailbox.Found(str(root), previous)
    return mailbox.measure(str(root), "auto", reuse, racy_cutoff_ns, TEMP, None, "", layout=layout).usage


def per_folder(usage: MailboxUsage) -> dict[str, tuple[int, int]]:
    return {f.name: (f.bytes, f.messages) for f in usage.folders}


def test_fs_layout_counts_nested_folders_named_as_dovecot_shows_them(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 1000)
    add_message(fs_folder(root, "Sent"), 200, where="new")
    add_message(fs_folder(root, "Archive"), 300)
    add_message(fs_folder(root, "Archive/2024"), 400)
    add_message(fs_folder(root, "Archive/2024/Q1"), 401, with_size=False, where="new")
    add_message(fs_folder(root, "Lists/dev"), 500)  # Lists itself holds no mail: not a folder
    add_message(fs_folder(root, "My.Folder"), 600)  # a dot inside a name is no hierarchy here
    add_message(fs_folder(root, b"caf\xc3\xa9 \xff"), 700)
    add_message(fs_folder(root, ".Hidden"), 777)  # an IMAP folder ".Hidden": Dovecot counts it
    add_message(fs_folder(root, "Sent/tmp"), 8888)  # below tmp/: never mail
    (root / "dovecot-uidlist").write_text("3 V1 N1\n")

    usage = measure(root)
    assert usage.known, usage.error
    assert per_folder(usage) == {
        "INBOX": (1000, 1),
        "Sent": (200, 1),
        "Archive": (300, 1),
        "Archive/2024": (400, 1),
        "Archive/2024/Q1": (401, 1),
        "Lists/dev": (500, 1),
        "My.Folder": (600, 1),
        "café \\xff": (700, 1),
        ".Hidden": (777, 1),
    }
    assert usage.warning is None


def test_fs_layout_with_hostile_names_counts_them_under_their_own_names(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 1)
    hostile = ["-rf", "a b", "x\ny", "\x1b[31mred", "x..y", "cur.d", "new folder", "*"]
    for i, name in enumerate(hostile):
        add_message(fs_folder(root, f"Top/{name}"), 10 + i)
    usage = measure(root)
    assert per_folder(usage) == {"INBOX": (1, 1), **{f"Top/{n}": (10 + i, 1) for i, n in enumerate(hostile)}}


def test_fs_layout_symlinks_are_not_followed_but_reported(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 100)
    add_message(fs_folder(root, "Sent"), 50)
    stash = tmp_path / "stash"
    add_message(fs_folder(stash, "Archive"), 5_000_000)
    add_message(fs_folder(stash, "Other"), 6_000_000)
    (root / "Archive").symlink_to(stash / "Archive")  # a folder
    os.makedirs(root / "Sent" / "\x1b]0;evil")
    (root / "Sent" / "\x1b]0;evil" / "cur").symlink_to(stash / "Other" / "cur")  # a cur/ of a sub-folder
    (root / "Loop").symlink_to(root / "Loop")

    usage = measure(root)
    assert usage.known, usage.error
    assert (usage.all_bytes, usage.all_messages) == (150, 2)
    warning = present(usage.warning)
    assert "symlink" in warning
    assert "Archive" in warning and "Loop" in warning
    # Kept as it is (report --format json gives it exactly), escaped once where it is shown.
    assert "Sent/\x1b]0;evil/cur" in warning
    assert "Sent/\\x1b]0;evil/cur" in printable(warning) and "\x1b" not in printable(warning)


@pytest.mark.parametrize("what", [".Archive", "cur", ".Junk/new"])
def test_maildirpp_symlinked_folder_cur_or_new_is_measured_with_a_warning(tmp_path: Path, what: str) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100, where="new")
    add_message(maildir_folder(root, "Junk"), 10)
    stash = tmp_path / "stash"
    add_message(maildir_folder(stash), 5_000_000)
    add_message(maildir_folder(stash), 5_000_000, where="new")
    target = root / what
    if target.exists():
        shutil.rmtree(target)
    target.symlink_to(stash / (what.rpartition("/")[2] if what != ".Archive" else ""))

    usage = measure(root, "maildir++")
    assert usage.known, usage.error  # unknown would open a full mailbox to its owner at will
    assert usage.all_bytes < 5_000_000
    warning = present(usage.warning)
    assert "symlink" in warning and what.lstrip(".").replace(".", "") in warning.replace(".", "")


def test_fs_layout_deeper_than_the_bound_is_counted_to_it_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 1)
    for level in range(1, maildir.MAX_DEPTH + 7):
        add_message(fs_folder(root, "/".join(["d"] * level)), 10)
    usage = measure(root)
    assert usage.known, usage.error
    assert usage.all_messages == 1 + maildir.MAX_DEPTH
    assert "deeper than" in present(usage.warning)


def test_fs_layout_with_too_many_folders_counts_the_first_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir, "MAX_FOLDERS", 5)
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 1)
    for i in range(8):
        add_message(fs_folder(root, f"F{i}"), 10)
    usage = measure(root)
    assert usage.known, usage.error
    assert len(usage.folders) == 5
    assert "more than 5 folders" in present(usage.warning)


def test_maildirpp_with_too_many_folders_counts_the_first_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: a user makes more Maildir++ folders than MAX_FOLDERS (a script, an imapsync of
    a huge archive). Expected: as for LAYOUT=fs, the first ones are counted (a lower bound,
    which still refuses when it alone is over) and the rest is reported; the listing is bounded,
    so one user's tree costs a scan and the store's folder column no more than that."""
    monkeypatch.setattr(maildir, "MAX_FOLDERS", 5)
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 1)
    for i in range(8):
        add_message(maildir_folder(root, f"F{i}"), 10)
    usage = measure(root, "maildir++")
    assert usage.known, usage.error
    assert len(usage.folders) == 5
    assert "more than 5 folders" in present(usage.warning)


def test_an_fs_tree_read_as_maildirpp_says_which_setting_to_change(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 100)
    add_message(fs_folder(root, "Sent"), 200)
    add_message(fs_folder(root, "Archive/2024"), 300)
    add_message(maildir_folder(root, "Junk"), 5)

    usage = measure(root, "maildir++")
    assert not usage.known and "maildir_layout" in present(usage.error)  # never known with less

    plain = tmp_path / "Plain"
    add_message(maildir_folder(plain), 100)
    os.makedirs(plain / "courierimapkeywords")  # a directory without cur/ or new/ is no folder
    assert measure(plain, "maildir++").warning is None


def _reading(address: str, usage: MailboxUsage) -> Reading:
    state = State.OK if usage.known else State.UNKNOWN
    return Reading(address, "/x", usage, usage.all_bytes, usage.all_messages, state, 0.0)


def test_the_layout_hint_counts_the_mailboxes_once(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 100)
    add_message(fs_folder(root, "Sent"), 200)
    usage = measure(root, "maildir++")
    readings = {f"u{i}@x": _reading(f"u{i}@x", usage) for i in range(3)}
    hint = present(layout_hint(readings))
    assert "3 mailboxes" in hint and 'maildir_layout = "fs"' in hint
    assert layout_hint({"a@x": _reading("a@x", measure(root, "fs"))}) is None


def test_a_warning_survives_the_store_and_an_error_stays_an_error(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 100)
    (root / "Sent").symlink_to(tmp_path)
    measured = _reading("a@x", measure(root))
    assert measured.usage.warning
    for r in (measured, _reading("b@x", MailboxUsage(measured.usage.format, error="warning: no such thing"))):
        row = usage_row(r)
        back = reading([row[c] for c in USAGE_COLUMNS])
        assert back.usage == r.usage
        assert back.reason == r.reason
    over = _reading("c@x", MailboxUsage(measured.usage.format, error="gone"))
    over = Reading(over.address, over.path, over.usage, 5, 1, State.OVER, 0.0)  # scan.kept_over's
    row = usage_row(over)
    assert not reading([row[c] for c in USAGE_COLUMNS]).usage.known


def test_fs_layout_unchanged_folders_are_reused_and_new_deep_folders_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "Maildir"
    add_message(fs_folder(root, b""), 100)
    add_message(fs_folder(root, "Sent"), 200)
    add_message(fs_folder(root, "Archive/2024"), 300)
    backdate(root)
    first = measure(root, "fs", None, time.time_ns())
    assert all(f.stamp is not None for f in first.folders)
    assert mailbox.unchanged(str(root), first, TEMP, layout="fs")

    read: list[str] = []
    original = maildir.read_folder

    def counting(fd: int, name: str, cutoff: int, *profile: Any, **before: Any) -> Any:
        read.append(name)
        return original(fd, name, cutoff, *profile, **before)

    monkeypatch.setattr(maildir, "read_folder", counting)
    assert measure(root, "fs", first, time.time_ns()) == first
    assert read == []

    add_message(fs_folder(root, "Archive/2024"), 5, where="new")
    assert not mailbox.unchanged(str(root), first, TEMP, layout="fs")
    second = measure(root, "fs", first, time.time_ns() - 2 * 10**9)
    assert read == ["Archive/2024"]
    backdate(root)
    second = measure(root, "fs", None, time.time_ns())
    assert mailbox.unchanged(str(root), second, TEMP, layout="fs")

    add_message(fs_folder(root, "Archive/2025"), 7)  # only Archive's mtime moves, not the root's
    assert not mailbox.unchanged(str(root), second, TEMP, layout="fs")
    third = measure(root, "fs", second, time.time_ns() - 2 * 10**9)
    assert per_folder(third)["Archive/2025"] == (7, 1)

    backdate(root)
    fourth = measure(root, "fs", None, time.time_ns())
    shutil.rmtree(root / "Archive" / "2024")
    assert not mailbox.unchanged(str(root), fourth, TEMP, layout="fs")
    # A reading taken under the other layout is never reused as unchanged.
    assert not mailbox.unchanged(str(root), fourth, TEMP, layout="maildir++")


def _scan_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "quotagate.scan"]


def test_a_scan_of_fs_trees_as_maildirpp_says_so_once_per_scan_and_fs_counts_them(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    addresses = []
    for i in range(3):
        root = env.maildir(f"u{i}")
        add_message(fs_folder(root, b""), 100)
        add_message(fs_folder(root, "Sent"), 200)
        add_message(fs_folder(root, "Archive/2024"), 300)
        addresses.append(env.add(f"u{i}", Limits(500)))
    backdate(env.spool)
    with caplog.at_level(logging.INFO):
        for _ in range(2):  # the second scan finds nothing changed: the hint is said again
            caplog.clear()
            result = env.scan()
            (hint,) = [w for w in _scan_warnings(caplog) if "mailboxes hold" in w]
            assert "3 mailboxes" in hint and "maildir_layout" in hint
    assert all(r.state is State.UNKNOWN and "maildir_layout" in present(r.reason) for r in result.readings.values())
    row = report.rows(env.store.mailboxes(), env.store.readings())[0]
    assert "maildir_layout" in row["reason"] and row["state"] == "unknown"

    env.configure(spool={"maildir_layout": "fs"}, folders=[{"match": "Archive/*", "exclude": True}])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        result = env.scan()
    assert _scan_warnings(caplog) == []
    for r in result.readings.values():
        assert {f.name: f.bytes for f in r.usage.folders} == {"INBOX": 100, "Sent": 200, "Archive/2024": 300}
        assert (r.bytes, r.state, r.reason) == (300, State.OK, None)


def test_a_symlinked_folder_is_logged_at_every_scan_and_leaves_the_mailbox_measured(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    root = env.maildir("alice")
    add_message(maildir_folder(root), 600)
    add_message(maildir_folder(env.base / "stash"), 5_000_000)
    (root / ".Archive\x1b[2J").symlink_to(env.base / "stash")
    address = env.add("alice", Limits(500))
    backdate(env.spool)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            caplog.clear()
            reading = env.scan().readings[address]
            assert reading.state is State.OVER  # measured: its own mail is over, the symlink does not hide it
            (line,) = _scan_warnings(caplog)
            shown = printable(line)  # as the log's formatter writes it
            assert address in shown and ".Archive\\x1b[2J" in shown and "\x1b" not in shown
