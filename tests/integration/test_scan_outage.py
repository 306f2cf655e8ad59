"""A vanished spool is an error, not an empty one: a scan that would read a missing or unmounted
spool root, or many mailboxes gone at once, as "empty" changes nothing, records nothing and
exits 69 (``--force`` overrides once)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.model import Format, Limits, State
from quotagate.store import open_store
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder

DOMAIN = "example.org"
EX_UNAVAILABLE = 69


class Site:
    """``size`` mailboxes on a real spool, half of them over quota, scanned once through the CLI."""

    def __init__(self, base: Path, size: int = 10, db: Path | None = None, **settings: str) -> None:
        self.base = base
        self.db = db or base / "q.db"
        self.spool = base / "spool"
        self.spool.mkdir(exist_ok=True)
        self.published = base / "overquota"
        self.config = base / "q.toml"
        self.locals = [f"u{i}" for i in range(size)]
        self.write_config(**settings)
        for i, local in enumerate(self.locals):
            add_message(maildir_folder(self.maildir(local)), 100)
            quota = "50" if i < size // 2 else "1M"
            assert self.run("mailbox", "add", f"{local}@{DOMAIN}", "--quota", quota) == 0

    def write_config(self, **settings: str) -> None:
        """``settings``: extra lines per section, e.g. ``spool='require_mount = true'``."""
        sections = {
            "store": f'url = "sqlite:///{self.db}"',
            "spool": f'root = "{self.spool}"',
            "scan": f'lock_file = "{self.base}/scan.lock"\nworkers = 1',
            "publish": f'file = "{self.published}"',
        }
        for name, extra in settings.items():
            sections[name] = sections.get(name, "") + "\n" + extra
        self.config.write_text("".join(f"[{name}]\n{body}\n" for name, body in sections.items()))

    def maildir(self, local: str) -> Path:
        return self.spool / DOMAIN / local / "Maildir"

    def run(self, *args: str) -> int:
        return main(["--config", str(self.config), *args])

    def state(self) -> tuple[dict[str, Any], str | None, Any]:
        """What the MTA and the daemon see: stored readings and flags, the published file, the last scan."""
        store = open_store(load_config(self.config).store.url)
        try:
            readings = {a: (r.state, r.bytes, r.messages, r.usage.format) for a, r in store.readings().items()}
            flags = {m.address: m for m in store.mailboxes()}
            published = self.published.read_text() if self.published.exists() else None
            return {"readings": readings, "mailboxes": flags}, published, store.last_scan()
        finally:
            store.close()

    def delete_rows(self, locals_: list[str]) -> None:
        """The directory shrinks (a bad LDAP filter, an emptied table): rows go from under quotagate."""
        engine = sa.create_engine(f"sqlite:///{self.db}")
        try:
            with engine.begin() as conn:
                for local in locals_:
                    conn.execute(
                        sa.text("DELETE FROM quotagate_mailbox WHERE address = :a"), {"a": f"{local}@{DOMAIN}"}
                    )
        finally:
            engine.dispose()


def over_in(published: Path) -> list[str]:
    return [line for line in published.read_text().splitlines() if not line.startswith("#")]


def over_in_file(site: Site) -> list[str]:
    return over_in(site.published)


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    s = Site(tmp_path)
    assert s.run("scan") == 0
    assert len(over_in_file(s)) == 5
    capsys.readouterr()
    return s


def refused(site: Site, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run a scan that must be refused: exit 69, nothing changed; returns its stderr."""
    before = site.state()
    assert site.run("scan", *args) == EX_UNAVAILABLE
    assert site.state() == before  # flags, readings, the published file and the last scan
    out, err = capsys.readouterr()
    assert "scan (" not in out  # no summary: this was no scan
    return err


@pytest.mark.parametrize("how", ["missing", "a file"])
def test_a_missing_spool_root_changes_nothing_and_exits_69(
    site: Site, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    shutil.move(site.spool, site.base / "elsewhere")
    if how == "a file":
        site.spool.write_text("")
    err = refused(site, capsys)
    assert len(err.splitlines()) == 1
    assert f"spool root {site.spool}" in err


def test_require_mount_refuses_a_root_that_is_not_a_mount_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(tmp_path, spool="require_mount = true")
    assert site.run("scan") == EX_UNAVAILABLE  # a temp dir is no mount point
    assert "not a mount point" in capsys.readouterr().err
    assert site.state()[2] is None  # nothing recorded as a scan
    assert site.run("scan", "--force") == 0


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted where the spool goes (needs root), unmounted afterwards."""
    spool = tmp_path / "spool"
    spool.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(spool)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_require_mount_scans_a_mounted_spool_and_refuses_it_unmounted(
    tmp_path: Path, mounted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(tmp_path, spool="require_mount = true")
    assert site.run("scan") == 0
    assert len(over_in_file(site)) == 5
    capsys.readouterr()
    subprocess.run(["umount", str(mounted)], check=True)
    assert not any(mounted.iterdir())  # the mount point is an empty directory again
    err = refused(site, capsys)
    assert "not a mount point" in err


def test_a_directory_shrinking_by_half_is_refused_until_forced(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.delete_rows(site.locals[:5])  # the five over-quota mailboxes leave the directory
    err = refused(site, capsys)
    assert "5 of 10" in err and "directory" in err and "--force" in err
    assert site.run("scan", "--force") == 0
    assert over_in_file(site) == []
    assert len(site.state()[0]["readings"]) == 5
    capsys.readouterr()
    assert site.run("scan") == 0  # the forced scan is the new baseline


def test_half_the_mailboxes_gone_from_disk_is_refused(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    for local in site.locals[:5]:
        shutil.rmtree(site.maildir(local).parent)
    err = refused(site, capsys)
    assert "5 of 10" in err and "disk" in err
    assert site.run("scan", "--force") == 0
    assert over_in_file(site) == []


def test_one_mailbox_deleted_in_a_small_site_does_not_block_scans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(tmp_path, size=5)
    assert site.run("scan") == 0
    capsys.readouterr()
    shutil.rmtree(site.maildir("u0"))  # 20% of the site, but one mailbox: its owner's doing
    assert site.run("scan") == 0
    assert f"u0@{DOMAIN}" not in over_in_file(site)
    capsys.readouterr()
    shutil.rmtree(site.maildir("u1").parent)  # two at once in a site of five is an outage
    shutil.rmtree(site.maildir("u2").parent)
    refused(site, capsys)


def test_max_vanished_is_a_share_of_the_measured_mailboxes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path, scan='max_vanished = "50%"')
    assert site.run("scan") == 0
    for local in site.locals[:5]:
        shutil.rmtree(site.maildir(local).parent)
    assert site.run("scan") == 0  # half is not more than half
    capsys.readouterr()


def test_every_logs_a_refused_round_and_carries_on(
    site: Site, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    shutil.move(site.spool, site.base / "elsewhere")
    before = site.state()
    caplog.set_level(logging.INFO)
    assert site.run("scan", "--every", "0.1s", "--count", "2") == 0
    refusals = [r.getMessage() for r in caplog.records if "spool root" in r.getMessage()]
    assert len(refusals) == 2
    assert site.state() == before


# -- store and published file in step -------------------------------------------------------------


EX_IOERR = 74


def test_an_unwritable_publish_directory_leaves_the_store_unchanged_and_exits_74(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    read_only: Callable[[Path], None],
) -> None:
    publish_dir = tmp_path / "exim"
    publish_dir.mkdir()
    site = Site(tmp_path)
    site.published = publish_dir / "overquota"
    site.write_config()
    assert site.run("scan") == 0
    assert site.run("mailbox", "add", f"u9@{DOMAIN}", "--quota", "50") == 0  # u9 is over quota now
    capsys.readouterr()
    read_only(publish_dir)
    with pytest.raises(OSError):
        (publish_dir / "probe").write_text("")  # really read-only, even for root

    before = site.state()
    assert site.run("scan") == EX_IOERR
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and str(site.published) in err and "Read-only file system" in err
    assert "scan (" not in out
    assert site.state() == before  # u9's flag and reading, the last scan: the store agrees with the file

    caplog.set_level(logging.INFO)
    assert site.run("scan", "--every", "0.1s", "--count", "2") == 0  # carries on, round after round
    assert len([r for r in caplog.records if str(site.published) in r.getMessage()]) == 2
    assert site.state() == before


def test_a_store_that_cannot_commit_leaves_the_published_file_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], read_only: Callable[[Path], None]
) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    site = Site(tmp_path, db=db_dir / "q.db")
    assert site.run("scan") == 0
    published = site.published.read_text()
    assert site.run("mailbox", "add", f"u9@{DOMAIN}", "--quota", "50") == 0
    read_only(db_dir)
    capsys.readouterr()
    assert site.run("scan") == 2  # a store error
    assert "readonly" in capsys.readouterr().err
    assert site.published.read_text() == published  # u9 not published: the store never said so


# -- a directory above some mailboxes gone ------------------------------------------------------


def test_a_vanished_domain_directory_keeps_its_full_mailboxes_refused(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unmounted per-domain volume is too few mailboxes for the site-wide outage check: its
    mailboxes measured before are unknown, the full ones kept full; a mailbox's own directory
    gone under its domain, or one never measured, is "missing" as ever; ``--force`` reads the
    domain as empty."""
    published = tmp_path / "overquota"
    env.configure(publish={"file": str(published)})
    for i in range(30):
        add_message(maildir_folder(env.spool / "big.test" / f"u{i}" / "Maildir"), 100)
        env.add(f"u{i}", path=f"big.test/u{i}/Maildir")
    small = env.spool / "small.test"
    full = [env.add(local, Limits(1000), path=f"small.test/{local}/Maildir") for local in ("full1", "full2")]
    for local in ("full1", "full2", "gone"):
        add_message(maildir_folder(small / local / "Maildir"), 5000)
    gone = env.add("gone", Limits(1000), path="small.test/gone/Maildir")
    env.scan()
    assert sorted(over_in(published)) == sorted([*full, gone])

    shutil.rmtree(small / "gone" / "Maildir")  # the mailbox's own directory: its owner's doing
    assert env.scan().readings[gone].usage.format is Format.MISSING
    shutil.move(small, tmp_path / "small.test.unmounted")
    later = env.add("later", Limits(1000), path="small.test/later/Maildir")  # never measured
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # and it stays so: an unknown reading is no "missing" one
        result = env.scan()
        assert sorted(over_in(published)) == sorted(full)
        for address in full:
            reading = result.readings[address]
            assert reading.state is State.OVER and "small.test: missing" in (reading.reason or "")
        assert result.readings[gone].state is State.OK and result.readings[gone].usage.known
        assert result.readings[later].usage.format is Format.MISSING and result.readings[later].usage.known
    assert all(any(a in r.getMessage() and "kept over quota" in r.getMessage() for r in caplog.records) for a in full)

    assert env.scan(force=True).readings[full[0]].state is State.OK
    assert over_in(published) == []


def test_a_mailbox_given_a_new_path_is_missing_there_until_its_first_delivery(env: Env, tmp_path: Path) -> None:
    """The admin moves a full mailbox to a new domain directory not made yet: nothing above it
    vanished (it was never there), so it is missing (empty) as any new mailbox, not kept full
    for ever (its mail refused, the directory never made)."""
    for i in range(30):
        add_message(maildir_folder(env.spool / "big.test" / f"u{i}" / "Maildir"), 100)
        env.add(f"u{i}", path=f"big.test/u{i}/Maildir")
    add_message(maildir_folder(env.spool / "old.test" / "zed" / "Maildir"), 5000)
    zed = env.add("zed", Limits(1000), path="old.test/zed/Maildir")
    assert env.scan().readings[zed].state is State.OVER
    env.add("zed", Limits(1000), path="new.test/zed/Maildir")
    for _ in range(2):
        reading = env.scan().readings[zed]
        assert reading.usage.known and reading.usage.format is Format.MISSING and reading.state is State.OK


@pytest.mark.parametrize("subdir", ["", "Maildir"], ids=["Maildir in the path", "maildir_subdir"])
def test_a_domain_volume_unmounted_under_its_empty_mount_point_keeps_its_full_mailboxes(
    env: Env, tmp_path: Path, subdir: str
) -> None:
    """An unmount leaves the mount point, an empty directory: with [spool] maildir_subdir the
    mailbox's own directory (the Maildir's parent) is what is missing there, and it is as unknown
    as when the Maildir is in the mailbox's path."""
    env.configure(spool={"maildir_subdir": subdir})
    tail = "" if subdir else "/Maildir"
    for i in range(30):
        add_message(maildir_folder(env.spool / "big.test" / f"u{i}" / "Maildir"), 100)
        env.add(f"u{i}", path=f"big.test/u{i}{tail}")
    add_message(maildir_folder(env.spool / "small.test" / "full" / "Maildir"), 5000)
    full = env.add("full", Limits(1000), path=f"small.test/full{tail}")
    assert env.scan().readings[full].state is State.OVER
    shutil.move(env.spool / "small.test", tmp_path / "unmounted")
    (env.spool / "small.test").mkdir()
    for _ in range(2):
        reading = env.scan().readings[full]
        assert reading.state is State.OVER and not reading.usage.known
