"""The scan flow on generated spools: directory -> usage -> store -> publish."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete

from quotagate.model import Format, Limits, Mailbox, Reading, State
from quotagate.scan import run_scan
from quotagate.store import open_store
from quotagate.store import schema as store_schema
from quotagate.usage import maildir
from tests.integration.conftest import NOBODY, as_nobody, make_unreadable
from tests.integration.scanenv import DOMAIN, Env, make_config, open_migrated
from tests.present import present
from tests.spoolgen import (
    add_message,
    backdate,
    independent_maildir_count,
    maildir_folder,
    python_mbox_count,
    totals,
    write_mbox,
)
from tests.usagefs import folder_stamp, read_maildirsize


class ReadCounter:
    """Wraps ``maildir.read_folder`` to record which folders are really read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        original = maildir.read_folder

        def counting(fd: int, name: str, cutoff: int, *profile: Any, **before: Any) -> Any:
            self.calls.append(name)
            return original(fd, name, cutoff, *profile, **before)

        monkeypatch.setattr(maildir, "read_folder", counting)

    def take(self) -> list[str]:
        calls, self.calls = sorted(self.calls), []
        return calls


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
    return ReadCounter(monkeypatch)


def summary_of(r: Reading) -> tuple[object, ...]:
    """What a reading says, with folders in a fixed order (the store returns them sorted by name)."""
    return (r.path, r.bytes, r.messages, r.state, r.reason, sorted(r.usage.folders, key=repr))


def _sample_maildir(root: Path) -> None:
    add_message(maildir_folder(root), 1000)
    add_message(maildir_folder(root), 2000, where="new", with_size=False)
    add_message(maildir_folder(root, "Sent"), 300)
    add_message(maildir_folder(root, "Archive.2024"), 400, with_size=False)
    add_message(maildir_folder(root, "Trash"), 50)


# -- what a scan measures -----------------------------------------------------------------------


def test_scan_measures_every_kind_of_mailbox(env: Env) -> None:
    _sample_maildir(env.maildir("alice"))
    write_mbox(env.spool / "mboxes" / "bob", ["one\n", "From two\n"])
    write_mbox(env.spool / "homes" / "carol" / "mbox", ["a\n"])
    write_mbox(env.spool / "homes" / "carol" / "mail" / "Sent", ["b\n", "c\n"])
    alice = env.add("alice")
    bob = env.add("bob", path="mboxes/bob")
    carol = env.add("carol", path=str(env.spool / "homes" / "carol"))  # absolute path
    dave = env.add("dave")  # no mailbox on disk yet
    erin = env.add("erin", enabled=False)
    _sample_maildir(env.maildir("erin"))

    result = env.scan()
    assert set(result.readings) == {alice, bob, carol, dave}
    assert erin not in result.readings

    a = result.readings[alice]
    walked = independent_maildir_count(env.maildir("alice"))
    assert {f.name: (f.bytes, f.messages) for f in a.usage.folders} == walked
    assert (a.bytes, a.messages) == totals(walked) == (3750, 5)
    assert a.path == str(env.maildir("alice"))
    assert a.usage.format is Format.MAILDIR

    b = result.readings[bob]
    mbox_path = env.spool / "mboxes" / "bob"
    assert (b.bytes, b.messages) == (mbox_path.stat().st_size, python_mbox_count(mbox_path))
    assert b.usage.format is Format.MBOX

    c = result.readings[carol]
    home = env.spool / "homes" / "carol"
    assert c.messages == python_mbox_count(home / "mbox") + python_mbox_count(home / "mail" / "Sent") == 3
    assert c.bytes == (home / "mbox").stat().st_size + (home / "mail" / "Sent").stat().st_size
    assert sorted(f.name for f in c.usage.folders) == ["mail/Sent", "mbox"]

    d = result.readings[dave]
    assert (d.state, d.bytes, d.messages, d.usage.format) == (State.OK, 0, 0, Format.MISSING)
    assert d.reason is None

    assert result.summary.mailboxes == 4
    assert result.summary.measured == 4
    assert result.summary.unknown == 0
    assert result.summary.messages == 5 + 2 + 3
    stored = env.store.readings()
    assert {a: summary_of(r) for a, r in stored.items()} == {a: summary_of(r) for a, r in result.readings.items()}


def test_over_quota_states(env: Env) -> None:
    for local in ("under", "exact", "over", "count"):
        add_message(maildir_folder(env.maildir(local)), 1000)
        add_message(maildir_folder(env.maildir(local)), 1000)
    env.add("under", Limits(2001))
    env.add("exact", Limits(2000))  # at the limit is over: no room for anything
    env.add("over", Limits(1999))
    env.add("count", Limits(0, 2))
    env.add("nolimit", Limits())
    states = {a.partition("@")[0]: r.state for a, r in env.scan().readings.items()}
    assert states == {
        "under": State.OK,
        "exact": State.OVER,
        "over": State.OVER,
        "count": State.OVER,
        "nolimit": State.OK,
    }


def test_threshold_share_of_the_limit(env: Env) -> None:
    add_message(maildir_folder(env.maildir("u")), 950)
    env.add("u", Limits(1000))
    assert env.scan().readings[f"u@{DOMAIN}"].state is State.OK
    env.configure(scan={"threshold": "95%"})
    assert env.scan(full=True).readings[f"u@{DOMAIN}"].state is State.OVER


def test_folder_rules_exclude_folders_from_the_total(env: Env) -> None:
    _sample_maildir(env.maildir("alice"))
    env.configure(folders=[{"match": "Trash", "exclude": True}, {"match": "Archive*", "exclude": True}])
    alice = env.add("alice", Limits(3301))
    r = env.scan().readings[alice]
    assert (r.bytes, r.messages) == (1000 + 2000 + 300, 3)
    assert (r.usage.all_bytes, r.usage.all_messages) == (3750, 5)  # raw usage keeps every folder
    assert r.state is State.OK


def test_symlink_loop_root_is_unknown_with_a_reason(env: Env) -> None:
    root = env.maildir("loop")
    root.parent.mkdir(parents=True)
    root.symlink_to(root)
    address = env.add("loop", Limits(1))
    result = env.scan()
    r = result.readings[address]
    assert r.state is State.UNKNOWN
    assert r.reason is not None and "symbolic links" in r.reason
    assert result.summary.unknown == 1
    assert present(env.store.reading(address)).reason == r.reason


def test_symlink_loop_inside_a_folder_does_not_hide_an_over_quota_mailbox(env: Env) -> None:
    root = env.maildir("sly")
    add_message(maildir_folder(root), 5000)
    junk = maildir_folder(root, "Junk")
    shutil.rmtree(os.path.join(junk, b"cur"))
    os.symlink(b"cur", os.path.join(junk, b"cur"))
    address = env.add("sly", Limits(1000))
    assert env.scan().readings[address].state is State.OVER


def test_unsafe_layout_path_is_unknown(env: Env) -> None:
    address = ".."
    env.store.upsert_mailboxes([Mailbox(f"{address}@{DOMAIN}", Limits(1))])
    r = env.scan().readings[f"..@{DOMAIN}"]
    assert r.state is State.UNKNOWN
    assert "cannot name a folder safely" in (r.reason or "")


# -- unreadable mailboxes, as a user without root's powers --------------------------------------


def test_unreadable_folder_makes_the_mailbox_unknown_never_over(
    open_dir: Path, open_up: Callable[[Path], None]
) -> None:
    spool = open_dir / "spool"
    for local in ("locked", "fine"):
        root = spool / DOMAIN / local / "Maildir"
        add_message(maildir_folder(root), 5000)
        add_message(maildir_folder(root, "Private"), 5000)
    config = make_config(open_dir, spool, publish={"file": str(open_dir / "db" / "over")})
    # Set the store up as root: the unprivileged child cannot import what lives under /root.
    store = open_migrated(config)
    store.upsert_mailboxes([Mailbox(f"{local}@{DOMAIN}", Limits(100)) for local in ("locked", "fine")])
    store.close()
    db = open_dir / "db"
    open_up(open_dir)
    if os.geteuid() == 0:
        for path in (db, *db.iterdir()):
            os.chown(path, NOBODY, NOBODY)
    make_unreadable(spool / DOMAIN / "locked" / "Maildir" / ".Private" / "cur")

    def scan() -> tuple[dict[str, Any], str]:
        store = open_store(config.store.url)
        try:
            result = run_scan(config, store)
            return result.readings, (db / "over").read_text()
        finally:
            store.close()

    readings, published = as_nobody(scan)
    locked = readings[f"locked@{DOMAIN}"]
    assert locked.state is State.UNKNOWN
    assert "Permission denied" in (locked.reason or "")
    assert (locked.bytes, locked.messages) == (0, 0)
    assert readings[f"fine@{DOMAIN}"].state is State.OVER
    lines = [line for line in published.splitlines() if not line.startswith("#")]
    assert lines == [f"fine@{DOMAIN}"]
    store = open_store(config.store.url)
    try:
        stored = store.reading(f"locked@{DOMAIN}")
        assert stored is not None and stored.state is State.UNKNOWN and stored.reason == locked.reason
    finally:
        store.close()


# -- maildirsize --------------------------------------------------------------------------------


def test_maildirsize_mismatch_is_reported_and_fixed(env: Env) -> None:
    fresh, stale = env.maildir("fresh"), env.maildir("stale")
    for root in (fresh, stale):
        _sample_maildir(root)
    (fresh / "maildirsize").write_text("0S\n3000 2\n750 3\n")
    (stale / "maildirsize").write_text("1000S\n100 1\n")
    os.chmod(stale / "maildirsize", 0o640)
    env.add("fresh")
    stale_address = env.add("stale", Limits(524288000, 1000))

    result = env.scan()
    assert result.maildirsize_mismatches == [stale_address]
    assert result.maildirsize_fixed == []
    r = result.readings[stale_address]
    assert not present(r.usage.maildirsize).agrees_with(r.bytes, r.messages)
    assert present(result.readings[f"fresh@{DOMAIN}"].usage.maildirsize).agrees_with(3750, 5)
    assert (stale / "maildirsize").read_text() == "1000S\n100 1\n"  # reported, not touched

    fixed = env.scan(fix_maildirsize=True)
    assert fixed.maildirsize_mismatches == [stale_address]
    assert fixed.maildirsize_fixed == [stale_address]
    parsed = read_maildirsize(stale)
    assert parsed is not None and parsed.info is not None
    assert parsed.info.agrees_with(3750, 5)
    assert parsed.info.definition == "1000S"  # the file's own: Courier takes the limit from it
    assert stat.S_IMODE((stale / "maildirsize").stat().st_mode) == 0o640
    assert (fresh / "maildirsize").read_text() == "0S\n3000 2\n750 3\n"

    after = env.scan()
    assert after.maildirsize_mismatches == []
    assert present(present(env.store.reading(stale_address)).usage.maildirsize).agrees_with(3750, 5)


def test_fixed_maildirsize_counts_after_folder_rules(env: Env) -> None:
    root = env.maildir("alice")
    _sample_maildir(root)
    (root / "maildirsize").write_text("1S\n3750 5\n")
    env.configure(folders=[{"match": "Trash", "exclude": True}])
    alice = env.add("alice")
    result = env.scan(fix_maildirsize=True)
    assert result.maildirsize_fixed == [alice]
    info = present(present(read_maildirsize(root)).info)
    assert (info.bytes, info.messages, info.definition) == (3700, 4, "1S")


# -- incremental scans ----------------------------------------------------------------------------


def _reading_totals(env: Env, address: str) -> tuple[int, int]:
    r = present(env.store.reading(address))
    return r.bytes, r.messages


def _scanned_sample(env: Env) -> tuple[Path, str]:
    """alice's sample Maildir, its times in the past, scanned once: its root and address."""
    env.configure(scan={"racy_seconds": 0})  # made just now: its ctimes are fresh, whatever backdate() does
    root = env.maildir("alice")
    _sample_maildir(root)
    backdate(root)
    alice = env.add("alice")
    env.scan()
    assert _reading_totals(env, alice) == (3750, 5)
    return root, alice


def test_incremental_scan_sees_added_deleted_and_moved_mail(env: Env) -> None:
    root, alice = _scanned_sample(env)
    assert env.scan().summary.measured == 0

    added = add_message(maildir_folder(root, "Sent"), 70, where="new")
    backdate(root)  # past mtimes, but not the ones stored: the change must still be seen
    result = env.scan()
    assert result.summary.measured == 1
    assert _reading_totals(env, alice) == (3820, 6)
    assert env.scan().summary.measured == 0

    os.unlink(next((root / "cur").iterdir()))  # the 1000-byte message
    backdate(root)
    assert env.scan().summary.measured == 1
    assert _reading_totals(env, alice) == (2820, 5)

    sent = maildir_folder(root, "Sent")
    os.rename(added, os.path.join(sent, b"cur", os.path.basename(added) + b":2,S"))
    backdate(root)
    result = env.scan()
    assert result.summary.measured == 1
    assert _reading_totals(env, alice) == (2820, 5)
    assert present(result.readings[alice].usage.folder("Sent")).stamp == folder_stamp(sent)
    assert independent_maildir_count(root)["Sent"] == (370, 2)


def _hide_behind_old_mtimes(directory: Path, change: Callable[[], object]) -> None:
    """What a mailbox's owner can do: change ``directory`` (add mail, a folder), then set its
    mtime back to what it was, as ``touch -d`` does. Its ctime moves on regardless."""
    before = os.stat(directory)
    change()
    os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(directory).st_mtime_ns == before.st_mtime_ns


def test_mail_hidden_behind_a_restored_mtime_is_found_by_an_incremental_scan(env: Env) -> None:
    root, alice = _scanned_sample(env)

    _hide_behind_old_mtimes(root / "cur", lambda: add_message(maildir_folder(root), 5000))
    assert env.scan().summary.measured == 1
    assert _reading_totals(env, alice) == (8750, 6)

    def new_folder() -> None:
        hidden = root / ".Hidden"
        for sub in ("cur", "new", "tmp"):
            (hidden / sub).mkdir(parents=True)
        add_message(hidden, 7000)
        backdate(hidden)  # its own cur/ and new/ as old as the rest

    _hide_behind_old_mtimes(root, new_folder)
    assert env.scan().summary.measured == 1
    assert _reading_totals(env, alice) == (15750, 7)


def test_mbox_mail_hidden_behind_a_restored_mtime_and_size_is_found(env: Env) -> None:
    env.configure(scan={"racy_seconds": 0})  # made just now: its ctimes are fresh, whatever backdate() does
    mbox = env.spool / "bob"
    write_mbox(mbox, ["one\n", "abcde\n"])
    backdate(env.spool)
    old = os.stat(mbox).st_mtime_ns - 3600 * 10**9
    os.utime(mbox, ns=(old, old))  # an old file: its stamp is kept
    bob = env.add("bob", path="bob")
    env.scan()
    assert _reading_totals(env, bob)[1] == 2
    assert env.scan().summary.measured == 0
    same_size = mbox.read_bytes().replace(b"\nabcde\n", b"\nFrom \n")  # a third message, not a byte more
    assert len(same_size) == os.stat(mbox).st_size

    def rewrite() -> None:
        mbox.write_bytes(same_size)

    _hide_behind_old_mtimes(mbox, rewrite)
    assert env.scan().summary.measured == 1
    assert _reading_totals(env, bob)[1] == 3


def test_incremental_scan_sees_new_and_removed_folders(env: Env) -> None:
    root = env.maildir("alice")
    _sample_maildir(root)
    backdate(root)
    alice = env.add("alice")
    env.scan()

    add_message(maildir_folder(root, "Projects.2025"), 600)
    backdate(root)
    r = env.scan().readings[alice]
    assert r.usage.folder("Projects.2025") is not None
    assert (r.bytes, r.messages) == (4350, 6)

    shutil.rmtree(root / ".Archive.2024")
    backdate(root)
    r = env.scan().readings[alice]
    assert r.usage.folder("Archive.2024") is None
    assert (r.bytes, r.messages) == (3950, 5)
    assert {f.name for f in present(env.store.reading(alice)).usage.folders} == {
        "INBOX",
        "Sent",
        "Trash",
        "Projects.2025",
    }


def test_incremental_scan_sees_a_missing_mailbox_appear(env: Env) -> None:
    alice = env.add("alice", Limits(100))
    first = env.scan()
    assert (first.readings[alice].state, first.readings[alice].usage.format) == (State.OK, Format.MISSING)
    assert env.scan().summary.measured == 0
    root = env.maildir("alice")
    add_message(maildir_folder(root), 500)
    backdate(env.spool)
    r = env.scan().readings[alice]
    assert (r.state, r.bytes, r.usage.format) == (State.OVER, 500, Format.MAILDIR)
    shutil.rmtree(root)
    r = env.scan().readings[alice]
    assert (r.state, r.bytes, r.usage.format) == (State.OK, 0, Format.MISSING)


def test_incremental_scan_sees_mbox_changes(env: Env) -> None:
    write_mbox(env.spool / "bob", ["one\n"])
    write_mbox(env.spool / "carol" / "mbox", ["a\n"])
    backdate(env.spool)
    bob = env.add("bob", path="bob")
    carol = env.add("carol", path="carol")
    env.scan()
    write_mbox(env.spool / "bob", ["two\n", "three\n"])  # appends
    write_mbox(env.spool / "carol" / "mail" / "Sent", ["b\n"])
    result = env.scan()
    assert result.readings[bob].messages == 3
    assert result.readings[carol].messages == 2


@pytest.mark.parametrize("made", ["Maildir", ".x/cur"])
def test_directories_made_in_a_full_mbox_home_never_clear_its_flag(env: Env, made: str) -> None:
    # Its owner makes a Maildir (in [spool] maildir_subdir) or a Maildir++ folder; the delivery
    # agent goes on writing the mbox files, which still count, at a full scan too.
    home = env.spool / "zed" / "mail"
    write_mbox(home / "inbox", ["x" * 2000 + "\n"])
    zed = env.add("zed", Limits(1000), path="zed/mail")
    assert env.scan().readings[zed].state is State.OVER
    (home / made).mkdir(parents=True)
    for full in (False, True):
        r = env.scan(full=full).readings[zed]
        assert (r.state, r.usage.format, r.path) == (State.OVER, Format.MBOX, str(home))
        # An empty Maildir/ beside the mbox files is passed over; a folder, counted with them.
        assert made == "Maildir" or "counted with them" in (r.reason or "")
    (home / "inbox").unlink()  # a real migration: the mbox files are gone
    add_message(maildir_folder(home / "Maildir" if made == "Maildir" else home), 10)
    r = env.scan().readings[zed]
    assert (r.state, r.usage.format, r.bytes) == (State.OK, Format.MAILDIR, 10)


def test_a_full_mbox_home_made_unknown_once_still_counts_its_mbox_files(env: Env, tmp_path: Path) -> None:
    """Its owner points a Maildir outside the spool (one unknown scan, flag kept), then makes a
    real one: the mbox files the delivery agent goes on writing still count."""
    outside = tmp_path / "outside"
    maildir_folder(outside)
    home = env.spool / "zed" / "mail"
    write_mbox(home / "inbox", ["x" * 2000 + "\n"])
    zed = env.add("zed", Limits(1000), path="zed/mail")
    assert env.scan().readings[zed].state is State.OVER
    (home / "Maildir").symlink_to(outside)
    r = env.scan().readings[zed]
    assert r.state is State.OVER and not r.usage.known
    (home / "Maildir").unlink()
    maildir_folder(home / "Maildir")
    for full in (False, True):
        r = env.scan(full=full).readings[zed]
        assert (r.state, r.usage.format) == (State.OVER, Format.MBOX) and r.bytes > 2000


def test_a_migration_that_leaves_an_mbox_behind_counts_both(env: Env) -> None:
    """mb2md or doveadm leaves the old mbox as an archive, and all new mail goes to the Maildir:
    while the mbox files the last reading counted are there, the Maildir counts with them (too
    much rather than too little, said at each scan), never not at all."""
    home = env.spool / "zed" / "mail"
    write_mbox(home / "inbox", ["x" * 400 + "\n"])
    zed = env.add("zed", Limits(10_000), path="zed/mail")
    mbox_bytes = env.scan().readings[zed].bytes
    inbox = maildir_folder(home / "Maildir")
    for _ in range(2):
        add_message(inbox, 10_000)
    for full in (False, True, False):
        r = env.scan(full=full).readings[zed]
        assert (r.state, r.usage.format, r.bytes) == (State.OVER, Format.MBOX, mbox_bytes + 20_000)
        assert "counted with them" in (r.reason or "")


def test_a_home_that_became_the_maildir_counts_its_messages_once(env: Env) -> None:
    """The mbox home itself made a Maildir (cur/ new/ tmp/ in it): a message file that starts
    with a From_ line is the Maildir's, not an mbox file of its own."""
    home = env.spool / "zed" / "mail"
    write_mbox(home / "inbox", ["x" * 400 + "\n"])
    zed = env.add("zed", Limits(10_000), path="zed/mail")
    mbox_bytes = env.scan().readings[zed].bytes
    maildir_folder(home)
    message = home / "cur" / "1700000000.M1P1.host,S=1000:2,S"
    message.write_bytes(b"From a@example.net Thu Nov  9 22:33:52 2023\n" + b"x" * (1000 - 45))
    r = env.scan().readings[zed]
    assert (r.usage.format, r.bytes) == (Format.MBOX, mbox_bytes + 1000), [f.name for f in r.usage.folders]


def test_unchanged_mailboxes_and_folders_are_not_read_again(env: Env, reads: ReadCounter) -> None:
    env.configure(scan={"racy_seconds": 0})  # made just now: its ctimes are fresh, whatever backdate() does
    for local in ("alice", "bob"):
        _sample_maildir(env.maildir(local))
    backdate(env.spool)
    alice, bob = env.add("alice"), env.add("bob")

    first = env.scan()
    assert reads.take() == sorted(["Archive.2024", "INBOX", "Sent", "Trash"] * 2)
    assert first.summary.measured == 2

    second = env.scan()
    assert reads.take() == []
    assert second.summary.measured == 0
    assert second.summary.written == 0
    assert {a: summary_of(r) for a, r in second.readings.items()} == {
        a: summary_of(r) for a, r in first.readings.items()
    }

    add_message(maildir_folder(env.maildir("alice"), "Sent"), 1, where="new")
    third = env.scan()
    assert reads.take() == ["Sent"]  # one folder of one mailbox
    assert third.summary.measured == 1
    assert third.readings[alice].bytes == first.readings[alice].bytes + 1
    assert summary_of(third.readings[bob]) == summary_of(first.readings[bob])


def test_folder_changed_within_racy_seconds_is_read_again(env: Env, reads: ReadCounter) -> None:
    _sample_maildir(env.maildir("alice"))  # written just now: mtimes too fresh to trust
    alice = env.add("alice")
    first = env.scan()
    assert all(f.stamp is None for f in first.readings[alice].usage.folders)
    assert first.readings[alice].usage.root_stamp is None
    reads.take()

    second = env.scan()
    assert second.summary.measured == 1
    assert reads.take() == ["Archive.2024", "INBOX", "Sent", "Trash"]


def test_a_folder_whose_mtime_was_set_back_is_still_racy_by_its_ctime(env: Env) -> None:
    """The owner can set an mtime back (touch -d) right after a change, and add mail again within
    the same tick of the clock as the scan's look: only the ctime says the folder is fresh."""
    _sample_maildir(env.maildir("alice"))
    backdate(env.maildir("alice"))  # mtimes an hour old, ctimes now
    alice = env.add("alice")
    usage = env.scan().readings[alice].usage
    assert all(f.stamp is None for f in usage.folders)
    assert usage.root_stamp is None


def test_racy_seconds_zero_trusts_fresh_mtimes(env: Env, reads: ReadCounter) -> None:
    _sample_maildir(env.maildir("alice"))
    env.configure(scan={"racy_seconds": 0})
    env.add("alice")
    env.scan()
    reads.take()
    second = env.scan()
    assert second.summary.measured == 0
    assert reads.take() == []


def test_full_scan_reads_everything(env: Env, reads: ReadCounter) -> None:
    _sample_maildir(env.maildir("alice"))
    backdate(env.spool)
    env.add("alice")
    env.scan()
    reads.take()
    result = env.scan(full=True)
    assert result.summary.full
    assert result.summary.measured == 1
    assert reads.take() == ["Archive.2024", "INBOX", "Sent", "Trash"]


def test_incremental_scan_keeps_non_utf8_folders(env: Env, reads: ReadCounter) -> None:
    env.configure(scan={"racy_seconds": 0})  # made just now: its ctimes are fresh, whatever backdate() does
    # Regression: stored folder names are display names ("Entw\\xfcrfe"); looking the folder up
    # by that name found nothing and stored it as empty.
    root = env.maildir("alice")
    add_message(maildir_folder(root), 100)
    add_message(maildir_folder(root, b"Entw\xfcrfe"), 700)
    backdate(root)
    alice = env.add("alice", Limits(800))
    assert env.scan().readings[alice].state is State.OVER
    reads.take()
    for _ in range(2):
        r = env.scan().readings[alice]  # nothing changed at all
        assert (r.bytes, r.messages, r.state) == (800, 2, State.OVER)
        assert reads.take() == []  # and nothing is read again
    add_message(maildir_folder(root), 1, where="new")
    r = env.scan().readings[alice]
    assert (r.bytes, r.messages) == (801, 3)
    assert reads.take() == ["INBOX"]


# -- the store ----------------------------------------------------------------------------------------


def test_second_scan_with_nothing_changed_writes_nothing(env: Env) -> None:
    _sample_maildir(env.maildir("alice"))
    write_mbox(env.spool / "bob", ["x\n"])
    backdate(env.spool)
    env.add("alice")
    env.add("bob", path="bob")
    env.add("nobody-yet")
    first = env.scan()
    assert first.summary.written == 3
    second = env.scan()
    assert second.summary.written == 0
    assert env.store.last_scan() == second.summary


def test_full_scan_with_nothing_changed_writes_nothing(env: Env) -> None:
    # Regression: folders measured INBOX-first in directory order but loaded from the store sorted
    # by name made Reading.same_measure fail, so every full scan rewrote every reading.
    root = env.maildir("alice")
    _sample_maildir(root)
    for name in ("Entwürfe", "archive", "Zz", "Ärger"):
        add_message(maildir_folder(root, name), 10)
    write_mbox(env.spool / "bob" / "mbox", ["a\n"])
    write_mbox(env.spool / "bob" / "mail" / "Sent", ["b\n"])
    write_mbox(env.spool / "bob" / "Zebra", ["c\n"])
    backdate(env.spool)
    env.add("alice")
    env.add("bob", path="bob")
    assert env.scan().summary.written == 2
    assert env.scan(full=True).summary.written == 0


def test_removed_mailbox_loses_its_reading(env: Env) -> None:
    for local in ("alice", "bob", "carol"):
        add_message(maildir_folder(env.maildir(local)), 10)
    backdate(env.spool)
    alice, bob, carol = env.add("alice"), env.add("bob"), env.add("carol")
    env.scan()
    assert set(env.store.readings()) == {alice, bob, carol}

    env.add("bob", enabled=False)
    result = env.scan()
    assert result.summary.written == 1
    assert env.store.reading(bob) is None
    assert set(env.store.readings()) == {alice, carol}

    engine = create_engine(env.config.store.url)  # the admin deletes carol's row by hand
    with engine.begin() as conn:
        conn.execute(delete(store_schema.mailbox).where(store_schema.mailbox.c.address == carol))
    engine.dispose()
    result = env.scan()
    assert result.summary.written == 1
    assert set(result.readings) == {alice}
    assert set(env.store.readings()) == {alice}


def test_moved_mailbox_is_measured_at_its_new_path(env: Env) -> None:
    add_message(maildir_folder(env.spool / "old"), 10)
    add_message(maildir_folder(env.spool / "new"), 20)
    backdate(env.spool)
    address = env.add("alice", path="old")
    env.scan()
    env.add("alice", path="new")
    r = env.scan().readings[address]
    assert (r.path, r.bytes) == (str(env.spool / "new"), 20)


# -- publishing ----------------------------------------------------------------------------------------


def _published_addresses(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_publish_file_lists_over_quota_addresses_sorted(env: Env) -> None:
    out = env.base / "exim" / "overquota"
    env.configure(publish={"file": str(out)})
    for local in ("zed", "amy", "mid", "ok"):
        add_message(maildir_folder(env.maildir(local)), 100)
    for local in ("zed", "amy", "mid"):
        env.add(local, Limits(50))
    env.add("ok", Limits(1000))
    env.add("missing", Limits(1))
    result = env.scan()
    assert result.published
    text = out.read_text()
    assert text.startswith("#")
    assert text.endswith("\n")
    assert _published_addresses(out) == [f"amy@{DOMAIN}", f"mid@{DOMAIN}", f"zed@{DOMAIN}"]
    assert result.summary.over == 3


def test_unchanged_publish_file_is_not_rewritten(env: Env) -> None:
    out = env.base / "overquota"
    env.configure(publish={"file": str(out)})
    add_message(maildir_folder(env.maildir("amy")), 100)
    backdate(env.spool)
    env.add("amy", Limits(50))
    assert env.scan().published
    before = out.stat()
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    before = out.stat()

    assert not env.scan().published
    assert not env.scan(full=True).published
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    env.add("amy", Limits(500))  # no longer over
    assert env.scan().published
    assert _published_addresses(out) == []
    assert out.stat().st_ino != before.st_ino


def test_a_full_mailbox_its_owner_makes_unmeasurable_stays_full(env: Env, tmp_path: Path) -> None:
    """A Maildir swapped for a symlink out of the spool is unknown; were its flag cleared, the
    owner of a full mailbox could open it at will. It stays over, with the reason, until it can
    be measured again."""
    out = env.base / "overquota"
    env.configure(publish={"file": str(out)})
    maildir = env.maildir("amy")
    add_message(maildir_folder(maildir), 100)
    address = env.add("amy", Limits(50))
    assert env.scan().readings[address].state is State.OVER
    outside = tmp_path / "outside"
    maildir.rename(outside)
    maildir.symlink_to(outside)

    for full in (False, True, False):
        r = env.scan(full=full).readings[address]
        assert (r.state, r.bytes) == (State.OVER, 100)
        assert r.reason and "outside" in r.reason
        assert _published_addresses(out) == [address]
        assert env.store.readings()[address].state is State.OVER

    maildir.unlink()
    outside.rename(maildir)
    (next((maildir / "cur").iterdir())).unlink()  # measured again, and now under
    assert env.scan().readings[address].state is State.OK
    assert _published_addresses(out) == []


def test_hostile_addresses_are_quoted(env: Env) -> None:
    out = env.base / "overquota"
    env.configure(publish={"file": str(out)})
    add_message(maildir_folder(env.spool / "shared"), 100)
    quoted = {
        "has space@x.org": '"has space@x.org"',
        "co:lon@x.org": '"co:lon@x.org"',
        'qu"ote@x.org': '"qu\\"ote@x.org"',
        "back\\slash@x.org": '"back\\\\slash@x.org"',
        "hash#@x.org": '"hash#@x.org"',
        "plain@x.org": "plain@x.org",
    }
    addresses = [*quoted, "new\nline@x.org", "cr\rx@x.org"]
    env.store.upsert_mailboxes([Mailbox(a, Limits(1), True, "shared") for a in addresses])
    result = env.scan()
    assert result.summary.over == len(addresses)
    assert _published_addresses(out) == [quoted[a] for a in sorted(quoted)]
    assert "line@" not in out.read_text()
    assert "\r" not in out.read_text()
