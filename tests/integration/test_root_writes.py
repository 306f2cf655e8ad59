"""Files quotagate (root) writes in a directory that belongs to another user (the admin's tools
beside a store, the MTA's beside the published file): the scan lock, the daemon's reservations
file, the published over-quota set. Whatever that user puts at their names must not be
followed, block, or be what root overwrites or copies."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from quotagate import publish
from quotagate.cli import main
from quotagate.policy import state
from quotagate.policy.reservations import Reservations, Transaction
from tests.integration.conftest import NOBODY
from tests.policy.conftest import ask, request
from tests.servers import schemas
from tests.servers.daemon import PolicyDaemon
from tests.servers.process import free_port

SECRET = "root:$y$secret:19000:0:99999:7:::\n"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the directory must belong to another user")


def classic_site(tmp_path: Path, policy: str = "") -> tuple[Path, Path]:
    """The classic schema in ``maildb/users.db`` with alice's mailbox, a spool, and a config
    naming no lock or state file (both beside the SQLite file); returns the config and maildb."""
    spool = tmp_path / "spool"
    (spool / "example.org" / "alice" / "Maildir" / "cur").mkdir(parents=True)
    maildb = tmp_path / "maildb"
    maildb.mkdir()
    url = f"sqlite:///{maildb}/users.db"
    schemas.create(url, "classic")
    schemas.add_mailbox(url, "classic", "alice@example.org", 10_000)
    config = tmp_path / "quotagate.toml"
    config.write_text(f'[store]\nurl = "{url}"\nschema = "classic"\n[spool]\nroot = "{spool}"\n{policy}')
    assert main(["--config", str(config), "db", "migrate"]) == 0
    return config, maildb


def hand_over(maildb: Path) -> None:
    """The directory and its files to the admin's tool's user (SQLite writers need the directory)."""
    for path in (maildb, *maildb.iterdir()):
        os.chown(path, NOBODY, NOBODY)


def root_only_file(tmp_path: Path) -> Path:
    victim = tmp_path / "shadow"  # a stand-in for /etc/shadow
    victim.write_text(SECRET)
    victim.chmod(0o600)
    return victim


@as_root
def test_the_scan_lock_beside_an_sqlite_file_is_not_followed_through_a_symlink(tmp_path: Path) -> None:
    """Scenario: the classic schema in an SQLite file (README's "Stores and schemas":
    `sqlite:////var/lib/mail/users.db`) kept by the admin's own tool as another user, who owns
    the directory; `[scan] lock_file` unset, so the scan lock is `users.db.scan-lock` beside it.
    That user plants it as a symlink to a root-only file; root's cron runs `quotagate scan`.
    Expected: the root-only file is untouched: the lock is opened without following a symlink
    (the scan refuses, saying why), never truncated and overwritten with a pid."""
    config, maildb = classic_site(tmp_path)
    hand_over(maildb)
    victim = root_only_file(tmp_path)
    lock = maildb / "users.db.scan-lock"
    lock.symlink_to(victim)  # what the directory's owner can do
    os.lchown(lock, NOBODY, NOBODY)

    code = main(["--config", str(config), "scan"])
    assert victim.read_text() == SECRET
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert code != 0  # refused, not run without its lock


@as_root
def test_a_fifo_at_the_reservations_file_does_not_stop_the_daemon_from_starting(tmp_path: Path) -> None:
    """Scenario: as above, the classic schema in an SQLite file whose directory belongs to the
    admin's tool's user; `[policy] state_file` unset, so the daemon keeps its reservations in
    `users.db.reservations.json` beside it. That user makes it a FIFO; the daemon is
    (re)started.
    Expected: the daemon starts and answers; the FIFO is not read (opening it would block
    before anything listens, every MTA check failing open while systemd waits), and the log
    says the reservations were not restored."""
    port = free_port()
    config, maildb = classic_site(
        tmp_path,
        f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n',
    )
    assert main(["--config", str(config), "scan"]) == 0
    hand_over(maildb)
    fifo = maildb / "users.db.reservations.json"
    os.mkfifo(fifo)
    os.chown(fifo, NOBODY, NOBODY)

    daemon = PolicyDaemon(config, port, tmp_path / "serve.log")
    try:
        try:
            daemon.start()  # waits up to 20 s for the port
        except (AssertionError, RuntimeError) as exc:
            pytest.fail(f"serve did not start listening: {exc}")
        assert ask(port, request("alice@example.org")).startswith(b"action="), daemon.log()
        assert "not restored" in daemon.log() and "not a regular file" in daemon.log(), daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGKILL)  # blocked in open(): SIGTERM waits for a loop never reached
            daemon.proc.wait(timeout=10)


def test_the_reservations_file_is_never_written_or_read_through_a_symlink_or_a_fifo(tmp_path: Path) -> None:
    """Scenario: the reservations file's directory belongs to another user, who makes the file a
    symlink to a file of root's, or a FIFO; the daemon saves its reservations (every few
    seconds, and at shutdown), and is restarted.
    Expected: the file of root's keeps its content and mode (the symlink is replaced by the
    daemon's own file, mode 0600); a FIFO is replaced at once, never opened (an open would
    block the save, and the daemon's shutdown with it); a symlink found at start is not read."""
    victim = root_only_file(tmp_path)
    path = tmp_path / "users.db.reservations.json"
    path.symlink_to(victim)
    assert state.load(path) == []  # not read through the symlink

    held = Reservations(600)
    assert held.hold(Transaction("192.0.2.1", "t1"), "alice@example.org", 700, 1.0, 10**9, 10**9)
    state.save(path, held)
    assert (victim.read_text(), stat.S_IMODE(victim.stat().st_mode)) == (SECRET, 0o600)
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert [r.mailbox for r in state.load(path)] == ["alice@example.org"]

    path.unlink()
    os.mkfifo(path)
    saving = threading.Thread(target=state.save, args=(path, held), daemon=True)
    saving.start()
    saving.join(timeout=5)
    if saving.is_alive():  # blocked opening the FIFO: a writer lets it go on
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        saving.join(timeout=5)
        pytest.fail("the save blocked on a FIFO at the reservations file")
    assert stat.S_ISREG(path.lstat().st_mode)
    assert [r.mailbox for r in state.load(path)] == ["alice@example.org"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shadow", path.name]  # no temp file left


def test_a_lock_file_with_another_name_locks_and_is_not_written(tmp_path: Path) -> None:
    """Scenario: /var/lib/quotagate is backed up with hard links (rsnapshot, cp -al): the scan
    lock beside the SQLite file gets a second name. Expected: scans go on (the lock still
    excludes a second scan), and the file, which has another name, is never truncated or
    written (it was refused outright: every scan stopped)."""
    from quotagate.scanlock import LockHeld, scan_lock

    lock = tmp_path / "q.db.scan-lock"
    lock.write_text("kept\n")
    os.link(lock, tmp_path / "backup-of-lock")
    with scan_lock(lock):
        assert lock.read_text() == "kept\n"
        with pytest.raises(LockHeld), scan_lock(lock):
            pass
    assert lock.read_text() == "kept\n"


@as_root
@pytest.mark.parametrize("planted", ["fifo", "symlink", "hard link"])
def test_what_stands_at_the_published_files_name_is_replaced_never_read(tmp_path: Path, planted: str) -> None:
    """Scenario: [publish] file lies in a directory of another user, who puts a FIFO, a symlink
    to a file only root may read, or a hard link to it at the file's name; the store then fails
    to commit the set just published.
    Expected: the publish neither blocks nor reads through it, and what is put back is that
    very FIFO, symlink or link, not a copy of what it leads to. (Before, the old file was read by
    its path to be put back: a FIFO hung every scan and watch's publishing for ever, holding the
    scan lock; a symlink had root copy the file it leads to into the published file, mode 0644.)"""
    directory = tmp_path / "exim"
    directory.mkdir()
    os.chown(directory, NOBODY, NOBODY)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    published = directory / "overquota"
    if planted == "fifo":
        os.mkfifo(published)
    elif planted == "symlink":
        published.symlink_to(secret)
    else:
        os.link(secret, published)
    before = os.lstat(published)
    done: list[bool] = []

    def publish_then_fail() -> None:
        with pytest.raises(RuntimeError), publish.published_first(published, ["full@example.org"]):
            raise RuntimeError("the store's commit failed")
        done.append(True)

    worker = threading.Thread(target=publish_then_fail, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # a reader stuck on the FIFO: let it go before failing
        os.close(os.open(published, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"publishing over a {planted} hung")
    assert done
    after = os.lstat(published)  # put back as it was: the very same thing, never read or copied
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert secret.read_text() == SECRET
    assert [p.name for p in directory.iterdir()] == ["overquota"]  # nothing left beside it


def test_an_admins_hard_linked_file_is_put_back_when_the_store_fails(tmp_path: Path) -> None:
    """Scenario: [publish] file in the admin's own directory, an ordinary file listing
    old@example.org that also has a second hard link (the admin's ``ln overquota
    overquota.bak``, or a backup/etckeeper copy made by link); a scan publishes, then the
    store's commit fails.
    Expected: the old file is put back at the published name (Exim's ``lsearch`` of a missing
    file is a lookup error, which defers mail).
    Before the fix (an earlier version of this session's): the hard-linked file was refused as
    "not a plain file", taken for no file at all, and the new one unlinked: no file was left."""
    published = tmp_path / "overquota"
    published.write_text("old@example.org\n")
    os.link(published, tmp_path / "overquota.bak")
    with pytest.raises(RuntimeError), publish.published_first(published, ["full@example.org"]):
        raise RuntimeError("the store's commit failed")
    assert published.exists(), "the published file was deleted when the store's commit failed"
    assert "old@example.org" in published.read_text()


@pytest.mark.parametrize("write", ["scan", "warn"])
def test_a_metrics_textfile_is_not_written_through_what_is_at_a_temp_name(tmp_path: Path, write: str) -> None:
    """Scenario: node_exporter's textfile directory belongs to another user (Debian's
    prometheus), who puts a symlink to a file of root's where a scan's (or warn's) metrics
    temp file will be: its name was the textfile's, the process id and the thread's.
    Expected: the file of root's keeps its content; the textfile is written, and no temp file
    is left.
    Before the fix: prometheus-client's write_to_textfile opened ``PATH.PID.THREAD`` with a plain
    open(): root truncated the file the symlink named and wrote the metrics into it."""
    from quotagate.model import ScanSummary
    from quotagate.scanmetrics import write_outlook_metrics, write_scan_metrics
    from quotagate.warn import Outlook

    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    victim = root_only_file(tmp_path)
    metrics = textfiles / "quotagate.prom"
    Path(f"{metrics}.{os.getpid()}.{threading.current_thread().ident}").symlink_to(victim)
    if write == "scan":
        write_scan_metrics(metrics, ScanSummary(1.0, 2.5, True, 2, 2, 1, 5, 1, 1, 2))
    else:
        write_outlook_metrics(metrics, Outlook(measured=3, above={}, full_within={}), 2.5)
    assert (victim.read_text(), stat.S_IMODE(victim.stat().st_mode)) == (SECRET, 0o600)
    assert f"quotagate_last_{write}_success_timestamp_seconds 2.5" in metrics.read_text()
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644  # node_exporter's user reads it
    assert sorted(p.name for p in textfiles.iterdir() if not p.is_symlink()) == ["quotagate.prom"]
