"""Layouts that find the Maildir: a mailbox directory holding ``Maildir/`` (PostfixAdmin's ``maildir``
column names the user's directory, Dovecot keeps the Maildir one level below) is that Maildir, measured,
stored and scanned incrementally there; and a scan whose results look like a misread layout says so."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from msgspec.structs import replace
from sqlalchemy import create_engine, text

from quotagate.config import Config, parse_config
from quotagate.model import Format, Limits, Mailbox, State
from quotagate.scan import ScanResult, run_scan
from quotagate.store import Store, open_store, store_for
from quotagate.watch.tracker import Tracker
from tests.integration.scanenv import DOMAIN, Env
from tests.integration.test_scan import ReadCounter, _sample_maildir
from tests.integration.test_watch import Spool
from tests.present import present
from tests.servers import schemas
from tests.spoolgen import add_message, backdate, independent_maildir_count, maildir_folder, totals, write_mbox

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


def set_spool(env: Env, **values: str) -> None:
    """``[spool]`` settings on top of the env's own (its root)."""
    env.config = replace(env.config, spool=replace(env.config.spool, **values))


class PostfixAdmin:
    """PostfixAdmin's own ``mailbox`` table in SQLite, rows as its web interface writes them, and a
    Dovecot-style spool: ``maildir = example.org/alice/`` with the Maildir in ``Maildir/`` below."""

    def __init__(self, base: Path, fmt: str) -> None:
        self.url = f"sqlite:///{base}/postfixadmin.db"
        self.spool = base / "vmail"
        schemas.create(self.url, "postfixadmin")
        schemas.add_mailbox(self.url, "postfixadmin", ALICE, 3000, maildir=f"{DOMAIN}/alice/")
        schemas.add_mailbox(self.url, "postfixadmin", BOB, 10**9, maildir=f"{DOMAIN}/bob/")
        self.config: Config = parse_config(
            {
                "store": {"url": self.url, "schema": "postfixadmin"},
                "spool": {"root": str(self.spool), "format": fmt},
                # The spool is made just now: its ctimes are fresh whatever backdate() does to
                # the mtimes, and a stamp is kept only when it is older than racy_seconds.
                "scan": {"workers": 1, "racy_seconds": 0},
            }
        )
        self.store: Store = store_for(self.config.store)
        self.store.migrate()

    def home(self, local: str) -> Path:
        return self.spool / DOMAIN / local

    def scan(self) -> ScanResult:
        return run_scan(self.config, self.store)

    def flags(self) -> dict[str, int]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT username, quotagate_overquota FROM mailbox")).all()
        finally:
            engine.dispose()
        return {address: int(flag) for address, flag in rows}


@pytest.fixture(params=["auto", "maildir"])
def postfixadmin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PostfixAdmin]:
    pfa = PostfixAdmin(tmp_path, request.param)
    try:
        yield pfa
    finally:
        pfa.store.close()


def _dovecot_home(home: Path) -> Path:
    """What Dovecot keeps beside the Maildir in a user's home: Sieve scripts, an index, a lock."""
    (home / "sieve").mkdir(parents=True)
    (home / "sieve" / "roundcube.sieve").write_text('require ["fileinto"];\nfileinto "Junk";\n' * 50)
    (home / ".dovecot.sieve").symlink_to("sieve/roundcube.sieve")
    (home / ".dovecot.svbin").write_bytes(b"\x00svbin" * 100)
    (home / "dovecot.sieve.log").write_text("sieve: error in line 1\n" * 20)
    return home / "Maildir"


def test_postfixadmin_maildir_one_level_below_is_measured_stored_and_scanned_incrementally(
    postfixadmin: PostfixAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = _dovecot_home(postfixadmin.home("alice"))
    _sample_maildir(alice)  # 3750 bytes in 5 messages, over alice's 3000
    bob = postfixadmin.home("bob") / "Maildir"
    add_message(maildir_folder(bob), 700)
    backdate(postfixadmin.spool)
    reads = ReadCounter(monkeypatch)

    first = postfixadmin.scan()
    a, b = first.readings[ALICE], first.readings[BOB]
    assert a.usage.format is b.usage.format is Format.MAILDIR
    assert {f.name: (f.bytes, f.messages) for f in a.usage.folders} == independent_maildir_count(alice)
    assert (a.bytes, a.messages, a.state) == (*totals(independent_maildir_count(alice)), State.OVER)
    assert (b.bytes, b.messages, b.state) == (700, 1, State.OK)
    # Where the live readers (maildirsize, inotify) look: the Maildir itself, not the home.
    assert (a.path, b.path) == (str(alice), str(bob))
    assert present(postfixadmin.store.reading(ALICE)).path == str(alice)
    assert postfixadmin.flags() == {ALICE: 1, BOB: 0}
    assert reads.take() == ["Archive.2024", "INBOX", "INBOX", "Sent", "Trash"]

    second = postfixadmin.scan()
    assert second.summary.measured == 0
    assert reads.take() == []
    assert second.summary.written == 0

    add_message(maildir_folder(bob), 50, where="new")
    third = postfixadmin.scan()
    assert third.summary.measured == 1
    assert reads.take() == ["INBOX"]  # one folder of one mailbox: the rest reused from the reading
    assert (third.readings[BOB].bytes, third.readings[BOB].path) == (750, str(bob))


def test_a_home_without_a_maildir_yet_is_found_once_the_maildir_appears(postfixadmin: PostfixAdmin) -> None:
    postfixadmin.home("alice").mkdir(parents=True)  # created by the admin tool, empty until delivery
    first = postfixadmin.scan()
    assert first.readings[ALICE].bytes == 0 and first.readings[ALICE].state is State.OK
    alice = postfixadmin.home("alice") / "Maildir"
    add_message(maildir_folder(alice), 4000)
    backdate(postfixadmin.spool)
    r = postfixadmin.scan().readings[ALICE]
    assert (r.path, r.usage.format, r.bytes, r.state) == (str(alice), Format.MAILDIR, 4000, State.OVER)


def test_a_home_that_is_itself_a_maildir_is_measured_there(postfixadmin: PostfixAdmin) -> None:
    home = postfixadmin.home("alice")
    add_message(maildir_folder(home), 100)
    add_message(maildir_folder(home / ".Sent"), 200)
    r = postfixadmin.scan().readings[ALICE]
    assert (r.path, r.bytes) == (str(home), 300)


def test_a_maildir_holding_a_plain_directory_with_mail_is_unknown(postfixadmin: PostfixAdmin) -> None:
    """A plain directory with cur/ and new/ in a Maildir++ root: Dovecot's INBOX (``INBOX=``), a
    ``LAYOUT=fs`` folder, or a stray copy. Which one, and so whether the delivery agent counts
    it, quotagate cannot tell: the mailbox is unknown, with the hint, never known with less."""
    home = postfixadmin.home("alice")
    add_message(maildir_folder(home), 100)
    add_message(maildir_folder(home / "Maildir"), 9000)
    r = postfixadmin.scan().readings[ALICE]
    assert (r.path, r.state) == (str(home), State.UNKNOWN)
    assert "maildir_layout" in (r.usage.error or "")


def test_a_home_with_a_tmp_directory_of_its_own_is_no_maildir(postfixadmin: PostfixAdmin) -> None:
    """A system user's home has its own ``tmp/``: the Maildir is the one below it."""
    home = postfixadmin.home("alice")
    (home / "tmp").mkdir(parents=True)
    add_message(maildir_folder(home / "Maildir"), 5000)
    r = postfixadmin.scan().readings[ALICE]
    assert (r.path, r.bytes) == (str(home / "Maildir"), 5000)


def test_a_maildirsize_is_never_rewritten_from_a_measurement_that_left_mail_out(env: Env) -> None:
    """Dovecot with ``INBOX=~/Maildir/INBOX``: the INBOX is a plain directory quotagate does not
    count (the mailbox is unknown); writing a total into Dovecot's maildirsize would make
    Dovecot's own quota let mail in past the limit."""
    root = env.maildir("alice")
    add_message(maildir_folder(root, "Sent"), 100)
    add_message(maildir_folder(root / "INBOX"), 8000)
    (root / "maildirsize").write_text("10000S\n8100 2\n")
    address = env.add("alice", Limits(10_000))
    r = env.scan(fix_maildirsize=True).readings[address]
    assert r.state is State.UNKNOWN
    assert (root / "maildirsize").read_text() == "10000S\n8100 2\n"


def test_a_dovecot_dbox_home_is_unknown_not_empty(env: Env) -> None:
    for local, marker in (("s", "mailboxes/INBOX/dbox-Mails"), ("m", "storage")):
        home = env.spool / DOMAIN / local
        (home / marker).mkdir(parents=True)
        if local == "m":
            (home / marker / "dovecot.map.index").write_bytes(b"\0" * 64)
            (home / marker / "m.1").write_bytes(b"x" * 8000)
        else:
            (home / marker / "u.1").write_bytes(b"x" * 8000)
        address = env.add(local, path=f"{DOMAIN}/{local}")
        r = env.scan().readings[address]
        assert not r.usage.known and "dbox" in (r.usage.error or ""), r


def test_format_maildir_never_counts_a_homes_mbox_files(env: Env) -> None:
    home = env.spool / DOMAIN / "alice"
    write_mbox(home / "inbox", ["x" * 2000 + "\n"])
    address = env.add("alice", path=f"{DOMAIN}/alice")
    env.scan()  # read as an mbox home first
    add_message(maildir_folder(home / "Maildir"), 300)
    set_spool(env, format="maildir")
    for full in (False, True):
        r = env.scan(full=full).readings[address]
        assert (r.path, r.usage.format, r.bytes) == (str(home / "Maildir"), Format.MAILDIR, 300)


def test_a_layout_that_does_not_fit_a_short_local_part_makes_that_mailbox_unknown(env: Env) -> None:
    set_spool(env, layout="{domain}/{local[0]}/{local[1]}/{local}")
    add_message(maildir_folder(env.spool / DOMAIN / "b" / "o" / "bob"), 100)
    bob, x = env.add("bob"), env.add("x")
    result = env.scan()
    assert result.readings[bob].bytes == 100
    assert not result.readings[x].usage.known and "give it a path" in (result.readings[x].usage.error or "")


def test_maildir_subdir_can_be_renamed_or_turned_off(env: Env) -> None:
    home = env.spool / DOMAIN / "alice"
    add_message(maildir_folder(home / "mail"), 300)
    address = env.add("alice", path=f"{DOMAIN}/alice")
    set_spool(env, format="maildir")
    assert env.scan().readings[address].bytes == 0
    set_spool(env, format="maildir", maildir_subdir="mail")
    r = env.scan().readings[address]
    assert (r.path, r.bytes) == (str(home / "mail"), 300)
    set_spool(env, format="maildir", maildir_subdir="")
    r = env.scan().readings[address]
    assert (r.path, r.bytes) == (str(home), 0)


def test_fix_maildirsize_rewrites_the_file_of_the_maildir_below(env: Env) -> None:
    maildir = _dovecot_home(env.spool / DOMAIN / "alice")
    _sample_maildir(maildir)
    (maildir / "maildirsize").write_text("1000S\n100 1\n")
    address = env.add("alice", path=f"{DOMAIN}/alice/")
    result = env.scan(fix_maildirsize=True)
    assert result.maildirsize_fixed == [address]
    assert (maildir / "maildirsize").read_text() == "1000S\n3750 5\n"
    assert not (env.spool / DOMAIN / "alice" / "maildirsize").exists()


@pytest.mark.parametrize("target", ["/etc", "../../../../../../etc", "/proc/self/cwd"])
def test_a_maildir_subdirectory_symlinked_out_of_the_spool_is_unknown(env: Env, target: str) -> None:
    home = env.spool / DOMAIN / "mallory"
    (home / "sieve").mkdir(parents=True)
    (home / "Maildir").symlink_to(target)
    address = env.add("mallory", Limits(1000), path=f"{DOMAIN}/mallory/")
    for fmt in ("auto", "maildir"):
        set_spool(env, format=fmt)
        reading = env.scan(fix_maildirsize=True).readings[address]
        assert reading.state is State.UNKNOWN, fmt
        assert "outside the spool root" in (reading.reason or "")
        assert reading.usage.folders == ()


def test_a_maildir_subdirectory_symlinked_within_the_spool_is_followed(env: Env) -> None:
    real = env.spool / "storage" / "alice"
    add_message(maildir_folder(real), 600)
    home = env.spool / DOMAIN / "alice"
    home.mkdir(parents=True)
    (home / "Maildir").symlink_to("../../storage/alice")
    address = env.add("alice", path=f"{DOMAIN}/alice/")
    r = env.scan().readings[address]
    assert (r.state, r.bytes, r.path) == (State.OK, 600, str(home / "Maildir"))


# -- a scan that looks like a misread layout says so -------------------------------------------------


def _maildir_homes(env: Env, count: int) -> list[str]:
    addresses = []
    for i in range(count):
        add_message(maildir_folder(env.spool / DOMAIN / f"u{i}"), 100 + i)
        addresses.append(env.add(f"u{i}", path=f"{DOMAIN}/u{i}"))
    backdate(env.spool)
    return addresses


def _move_every_maildir_down(env: Env, addresses: list[str]) -> None:
    """What a migration to Dovecot's ``mail_location = maildir:~/Maildir`` does to each home."""
    for address in addresses:
        home = env.spool / DOMAIN / address.partition("@")[0]
        home.rename(home.with_name("moving"))
        home.mkdir()
        shutil.move(home.with_name("moving"), home / "Maildir")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "quotagate.scan"]


@pytest.mark.parametrize("fmt", ["auto", "maildir"])
def test_a_spool_whose_mailboxes_all_moved_warns_loudly(env: Env, caplog: pytest.LogCaptureFixture, fmt: str) -> None:
    set_spool(env, format=fmt, maildir_subdir="")
    addresses = _maildir_homes(env, 5)
    with caplog.at_level(logging.INFO):
        env.scan()
        add_message(maildir_folder(env.spool / DOMAIN / "u0"), 5, where="new")
        env.scan()
        assert _warnings(caplog) == []  # a normal spool, a normal change

        _move_every_maildir_down(env, addresses)
        result = env.scan()
    # Each home holds nothing but a Maildir (read as a Maildir: a plain directory with cur/ and
    # new/): unknown, not empty (its flag kept), saying where to look.
    assert all(not r.usage.known for r in result.readings.values())
    assert all("maildir_subdir" in w for w in _warnings(caplog)), _warnings(caplog)
    if fmt == "auto":
        assert [w for w in _warnings(caplog) if "Maildir/" in w] == _warnings(caplog)
        assert len(_warnings(caplog)) == len(addresses)


def test_a_spool_whose_mailboxes_all_moved_below_is_found_without_a_warning(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    addresses = _maildir_homes(env, 5)
    env.scan()
    _move_every_maildir_down(env, addresses)
    with caplog.at_level(logging.INFO):
        result = env.scan()
    assert _warnings(caplog) == []
    assert result.summary.bytes == sum(100 + i for i in range(5))
    assert {r.path for r in result.readings.values()} == {
        str(env.spool / DOMAIN / f"u{i}" / "Maildir") for i in range(5)
    }


def test_watch_follows_the_maildir_found_below_the_mailbox_path(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("alice", 100)
        maildir = spool.maildir("alice")  # example.org/alice/Maildir
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(spool.root)},
                "watch": {"flush_seconds": 0.05},
                "scan": {"racy_seconds": 0},
            }
        )
        store = open_store(config.store.url)
        store.migrate()
        store.upsert_mailboxes([Mailbox(ALICE, Limits(1000), path=f"{DOMAIN}/alice/")])
        tracker = Tracker(config, publish=lambda changed, removed: asyncio.sleep(0))
        try:
            tracker.load(store.mailboxes(), run_scan(config, store).readings)
            tracker.start_watching()
            for _ in range(2):  # the first flush adds watches and measures once more
                await tracker.flush()
            assert set(tracker._watches[ALICE]) == {str(maildir), f"{maildir}/cur", f"{maildir}/new"}
            await tracker._poll(everything=True)
            assert not tracker._dirty  # unchanged where it was found: not measured again

            task = asyncio.create_task(tracker.run())
            spool.deliver("alice", 950)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if tracker.readings[ALICE].state is State.OVER:
                    break
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            r = tracker.readings[ALICE]
            assert (r.bytes, r.messages, r.state, r.path) == (1050, 2, State.OVER, str(maildir))
        finally:
            tracker.close()
            store.close()

    asyncio.run(main())


def test_polling_a_layout_fs_mailbox_that_did_not_change_measures_nothing(tmp_path: Path) -> None:
    # The poll looks at each folder where the layout puts it: Archive/2024 is Maildir/Archive/2024.
    async def main() -> None:
        spool = Spool(tmp_path / "spool")
        spool.deliver("alice", 100)
        maildir = spool.maildir("alice")
        add_message(maildir_folder(maildir / "Archive" / "2024"), 300)
        backdate(maildir)
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(spool.root), "maildir_layout": "fs"},
                "watch": {"mode": "poll"},
                "scan": {"racy_seconds": 0},
            }
        )
        store = open_store(config.store.url)
        store.migrate()
        store.upsert_mailboxes([Mailbox(ALICE, Limits(1000))])
        tracker = Tracker(config, publish=lambda changed, removed: asyncio.sleep(0))
        try:
            readings = run_scan(config, store).readings
            assert {f.name for f in readings[ALICE].usage.folders} == {"INBOX", "Archive/2024"}
            tracker.load(store.mailboxes(), readings)
            tracker._dirty.clear()  # what load marks for a first measure once watched
            await tracker._poll(everything=True)
            assert not tracker._dirty
            add_message(maildir / "Archive" / "2024", 5, where="new")
            await tracker._poll(everything=True)
            assert tracker._dirty == {ALICE}
        finally:
            tracker.close()
            store.close()

    asyncio.run(main())


# -- an mbox home whose IMAP folders are named as a Maildir's parts --------------------------------
_MBOX_MESSAGE = b"From a@b.example Mon Jan  1 00:00:00 2024\nSubject: x\n\n" + b"y" * 1000 + b"\n"


@pytest.mark.parametrize("folders", [("cur", "new"), ("new",)], ids=["cur and new", "new"])
def test_mbox_folders_named_cur_and_new_are_files_of_an_mbox_home(env: Env, folders: tuple[str, ...]) -> None:
    """Scenario: an mbox home (``inbox``) whose user made IMAP folders named cur and new: Dovecot
    keeps them as the mbox *files* cur and new; limit 2,000 bytes.
    Expected: an mbox home, every message counted, over quota.
    Before the fix: any entry named cur or new was a Maildir's: both files made the home an
    empty Maildir (a full mailbox open), one made it "only one of cur/ and new/": unknown."""
    env.configure(spool={"layout": "{domain}/{local}"})
    home = env.spool / "example.org" / "alice"
    home.mkdir(parents=True)
    for name in ("inbox", *folders):
        (home / name).write_bytes(_MBOX_MESSAGE)
    address = env.add("alice", Limits(2000, 0))
    reading = env.scan().readings[address]
    assert (reading.usage.format, reading.messages, reading.state) == (Format.MBOX, 1 + len(folders), State.OVER)


def test_a_directory_named_maildir_holding_mbox_folders_is_no_maildir(env: Env) -> None:
    """Scenario: an mbox home with ``inbox`` (3 messages) and a directory named Maildir (the
    default ``maildir_subdir``) holding a folder hierarchy of the mbox user (Dovecot keeps the
    folder Maildir/old as the file Maildir/old); limit 2,000 bytes.
    Expected: the home's mail counted, over quota.
    Before the fix: the directory was measured as the Maildir without a look: an empty mailbox."""
    env.configure(spool={"layout": "{domain}/{local}"})
    home = env.spool / "example.org" / "alice"
    (home / "Maildir").mkdir(parents=True)
    (home / "inbox").write_bytes(_MBOX_MESSAGE * 3)
    (home / "Maildir" / "old").write_bytes(_MBOX_MESSAGE)
    address = env.add("alice", Limits(2000, 0))
    reading = env.scan().readings[address]
    assert (reading.usage.format, reading.state, reading.bytes) == (Format.MBOX, State.OVER, 4 * len(_MBOX_MESSAGE))


@pytest.mark.parametrize("fmt", ["auto", "maildir"])
def test_an_empty_maildir_subdir_is_the_maildir_the_agent_fills_later(env: Env, fmt: str) -> None:
    """Scenario: a home (Dovecot's: a sieve script beside) with an empty Maildir/ made before the
    first delivery; then mail is delivered into it. Expected: an empty Maildir, known, then the
    mail counted by the next incremental scan (a review found both broken by passing over every
    Maildir/ that is no Maildir yet)."""
    env.configure(spool={"layout": "{domain}/{local}", "format": fmt})
    home = env.spool / "example.org" / "alice"
    (home / "Maildir").mkdir(parents=True)
    (home / "sieve").mkdir()
    (home / "sieve" / "filter.sieve").write_text("keep;\n")
    address = env.add("alice", Limits(2000, 0))
    reading = env.scan().readings[address]
    assert (reading.usage.known, reading.bytes, reading.path) == (True, 0, str(home / "Maildir"))
    add_message(maildir_folder(home / "Maildir"), 3000)
    reading = env.scan().readings[address]
    assert (reading.bytes, reading.state) == (3000, State.OVER)


@pytest.mark.parametrize("first", ["missing", "this"], ids=["a new account", "a first scan"])
def test_an_empty_maildir_beside_mbox_mail_hides_nothing(env: Env, first: str) -> None:
    """Scenario: an mbox home (``inbox``, 3 messages, limit 2,000 bytes) beside an empty
    ``Maildir/`` (its user's: Dovecot mbox makes one for IMAP ``CREATE Maildir/``), at a new
    account's next scans or at a first scan. Expected: the inbox counted, over quota, incremental
    and full. Found by the review of 3cb52df, which took every empty Maildir/ for the mailbox."""
    env.configure(spool={"layout": "{domain}/{local}"}, scan={"workers": 1, "racy_seconds": 0})
    address = env.add("alice", Limits(2000, 0))
    if first == "missing":
        assert env.scan().readings[address].usage.format is Format.MISSING
    home = env.spool / "example.org" / "alice"
    (home / "Maildir").mkdir(parents=True)
    (home / "inbox").write_bytes(_MBOX_MESSAGE * 3)
    for full in (False, True):
        r = env.scan(full=full).readings[address]
        assert (r.usage.format, r.state) == (Format.MBOX, State.OVER), (r.usage.format, r.bytes, r.path)
