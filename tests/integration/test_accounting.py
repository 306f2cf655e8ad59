"""Accounting profiles on real files: each counts a mailbox as its delivery agent does.

The table of odd names (issue 12) is counted differently by every program; quotagate follows the
profile it is configured with. A message of 50 bytes (3 bare LFs: virtual size 53) sits in cur/
under each odd name, next to one ordinary message that every profile counts alike.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from quotagate.accounting import FILES, PROFILES, Profile, with_options
from quotagate.config import AccountingOptions, Regex
from quotagate.model import Limits, MailboxUsage, State
from quotagate.usage import mailbox
from quotagate.usage.safefs import Roots
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, backdate, maildir_folder, message_bytes, write_mbox

ROOTS = Roots.of("/tmp")
SIZE = 50
VSIZE = SIZE + message_bytes(SIZE).count(b"\n")
NAMES = ["files", "dovecot", "dovecot-count", "courier", "exim"]


def measure(root: Path, profile: Profile, previous: MailboxUsage | None = None, cutoff: int = 0) -> MailboxUsage:
    reuse = None if previous is None else mailbox.Found(str(root), previous)
    return mailbox.measure(str(root), "auto", reuse, cutoff, ROOTS, None, "", profile).usage


def _plain(cur: Path, name: str) -> None:
    (cur / name).write_bytes(message_bytes(SIZE))


def _directory(cur: Path, name: str) -> None:
    (cur / name).mkdir()


def _symlink(cur: Path, name: str) -> None:
    target = cur.parent / "elsewhere"
    target.write_bytes(message_bytes(SIZE))
    (cur / name).symlink_to(target)


DIR_SIZE = -1  # a directory counted by its own lstat size
# (what is made, its name) -> (bytes, messages) per profile, in the order of NAMES.
TABLE = {
    ("file", "x,S=:2,S"): [(SIZE, 1), (0, 1), (VSIZE, 1), (0, 1), (SIZE, 1)],
    ("file", "x,S=12abc"): [(SIZE, 1), (SIZE, 1), (VSIZE, 1), (12, 1), (SIZE, 1)],
    ("file", "x:2,S=300"): [(SIZE, 1), (300, 1), (VSIZE, 1), (SIZE, 1), (SIZE, 1)],
    ("file", "x,S=20,W=30:2,S"): [(20, 1), (20, 1), (30, 1), (20, 1), (SIZE, 1)],
    ("file", ".hidden,S=20:2,S"): [(0, 0), (20, 1), (0, 0), (0, 0), (SIZE, 1)],
    # Exim adds up what a directory holds; quotagate does not read it (empty here: 0 either way).
    ("directory", "d,S=40:2,S"): [(0, 0), (40, 1), (0, 0), (40, 1), (0, 1)],
    ("directory", "d:2,S"): [(0, 0), (DIR_SIZE, 1), (0, 0), (DIR_SIZE, 1), (0, 1)],
    # Every program but quotagate's own rules counts a symlink; they follow it for its size
    # (here 50) where the name gives none, quotagate never does: 0 bytes.
    ("symlink", "l,S=30:2,S"): [(0, 0), (30, 1), (0, 1), (30, 1), (0, 1)],
    ("symlink", "l:2,S"): [(0, 0), (0, 1), (0, 1), (0, 1), (0, 1)],
}
MAKERS = {"file": _plain, "directory": _directory, "symlink": _symlink}


def _cases() -> list[object]:
    return [
        pytest.param(kind, name, profile, TABLE[(kind, name)][i], id=f"{profile}-{kind}-{name}")
        for (kind, name) in TABLE
        for i, profile in enumerate(NAMES)
    ]


@pytest.mark.parametrize(("kind", "name", "profile", "expected"), _cases())
def test_odd_names(tmp_path: Path, kind: str, name: str, profile: str, expected: tuple[int, int]) -> None:
    root = tmp_path / "Maildir"
    inbox = Path(os.fsdecode(maildir_folder(root)))
    add_message(inbox, 100, unique="ordinary,S=100,W=103")
    MAKERS[kind](inbox / "cur", name)
    want_bytes, want_messages = expected
    if want_bytes == DIR_SIZE:
        want_bytes = os.lstat(inbox / "cur" / name).st_size
    usage = measure(root, PROFILES[profile])
    assert usage.known, usage.error
    ordinary = 103 if profile == "dovecot-count" else 100
    assert (usage.all_bytes, usage.all_messages) == (ordinary + want_bytes, 1 + want_messages)


def test_a_message_without_w_is_read_for_its_virtual_size(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 1000, with_size=False)  # 3 bare LFs
    crlf = Path(os.fsdecode(inbox)) / "cur" / "crlf:2,S"
    crlf.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    usage = measure(root, PROFILES["dovecot-count"])
    assert (usage.all_bytes, usage.all_messages) == (1003 + crlf.stat().st_size, 2)


def test_courier_leaves_out_trash_and_t_flagged_mail(env: Env) -> None:
    root = env.maildir("u")
    add_message(maildir_folder(root), 100, flags="2,S")
    add_message(maildir_folder(root), 200, flags="2,ST")
    add_message(maildir_folder(root, "Trash"), 400)
    add_message(maildir_folder(root, "Trash.Old"), 800)
    address = env.add("u", Limits(1300, 0))

    env.configure(spool={"accounting": "courier"})
    r = env.scan(full=True).readings[address]
    assert (r.bytes, r.messages, r.state) == (900, 2, State.OK)
    assert {f.name: f.bytes for f in r.usage.folders}["Trash"] == 400  # measured, not counted

    env.configure(spool={"accounting": "courier", "accounting_options": {"trash_quota": True}})
    r = env.scan().readings[address]  # another tag: nothing measured before is reused
    assert (r.bytes, r.messages, r.state) == (1500, 4, State.OVER)


def test_folder_rules_still_apply_on_top(env: Env) -> None:
    root = env.maildir("u")
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, "Junk"), 50)
    add_message(maildir_folder(root, "Trash"), 400)
    address = env.add("u")
    env.configure(spool={"accounting": "courier"}, folders=[{"match": "Junk", "exclude": True}])
    r = env.scan(full=True).readings[address]
    assert (r.bytes, r.messages) == (100, 1)


@pytest.mark.parametrize(("inclusive", "over"), [(True, True), (False, False)])
def test_exim_boundary_reaches_the_published_set(env: Env, inclusive: bool, over: bool) -> None:
    root = env.maildir("u")
    add_message(maildir_folder(root), 1000)
    address = env.add("u", Limits(1000, 0))
    env.configure(spool={"accounting": "exim", "accounting_options": {"quota_is_inclusive": inclusive}})
    result = env.scan(full=True)
    assert (result.readings[address].state is State.OVER) is over
    add_message(maildir_folder(root), 1)
    assert env.scan().readings[address].state is State.OVER


def test_exim_sizes_by_stat_unless_quota_size_regex(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100, name_size=7)
    assert measure(root, PROFILES["exim"]).all_bytes == 100
    regex = with_options(PROFILES["exim"], AccountingOptions(quota_size_regex=Regex(r",S=(\d+)")))
    assert measure(root, regex).all_bytes == 7


def test_a_reading_under_another_profile_is_not_reused(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    add_message(maildir_folder(root), 100, name_size=7)
    backdate(root)
    cutoff = time.time_ns()
    first = measure(root, FILES, cutoff=cutoff)
    assert first.all_bytes == 7
    assert mailbox.unchanged(str(root), first, ROOTS, FILES)
    assert not mailbox.unchanged(str(root), first, ROOTS, PROFILES["exim"])
    assert measure(root, PROFILES["exim"], first, cutoff).all_bytes == 100


def test_mbox_under_dovecot_splits_as_dovecot(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    write_mbox(path, ["one\n", "two\n"])
    data = path.read_bytes()
    # procmail-style: the last message has no final newline, the next From_ follows directly
    path.write_bytes(data.rstrip(b"\n") + b"\nFrom x@y Thu Nov 26 02:20:14 2026\nSubject: 3\n\nthree\n")
    assert measure(path, FILES).all_messages == 2
    assert measure(path, PROFILES["dovecot"]).all_messages == 3
