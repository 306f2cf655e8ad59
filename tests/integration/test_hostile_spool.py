"""A local user attacks the spool quotagate scans as root: nothing outside a mailbox is read or
written, and one bad mailbox never stops the scan for the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from msgspec.structs import replace

from quotagate.model import Limits, State
from quotagate.report import rows
from quotagate.usage import safefs
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder

USER, OTHER_USER = 5000, 5001
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need files owned by other users")


def user_maildir(env: Env, local: str, uid: int, size: int = 1000, maildirsize: str | None = None) -> Path:
    root = env.maildir(local)
    add_message(maildir_folder(root), size)
    if maildirsize is not None:
        (root / "maildirsize").write_text(maildirsize)
    for path in (root, *root.rglob("*")):
        os.chown(path, uid, uid, follow_symlinks=False)
    os.chown(root.parent, uid, uid)  # the user owns the directory holding their Maildir
    return root


def stored_text(env: Env) -> str:
    """Everything the store and the report say, as one string to search for leaks."""
    data = rows(env.store.mailboxes(), env.store.readings())
    return json.dumps(data, default=str)


@pytest.mark.slow
def test_swapping_the_maildir_for_a_symlink_never_gets_a_file_written_outside(env: Env, tmp_path: Path) -> None:
    alice = user_maildir(env, "alice", USER, maildirsize="1S\n999 9\n")
    bob = user_maildir(env, "bob", OTHER_USER, size=300, maildirsize="1S\n300 1\n")
    bob_before = (bob / "maildirsize").read_bytes()
    outside = tmp_path / "cron.d"  # stands for any root-owned directory outside the spool
    outside.mkdir()
    env.add("alice")
    env.add("bob")
    parked = alice.with_name("Maildir.real")
    stop = threading.Event()
    swaps = [0]

    def attacker() -> None:
        targets = [outside, bob]
        while not stop.is_set():
            target = targets[swaps[0] % 2]
            # The user puts a wrong maildirsize back, then swaps the Maildir for a symlink and back.
            (alice / "maildirsize.new").write_text("1S\n999 9\n")
            os.chown(alice / "maildirsize.new", USER, USER)
            os.rename(alice / "maildirsize.new", alice / "maildirsize")
            os.rename(alice, parked)
            os.symlink(target, alice)
            time.sleep(0.0005)
            os.unlink(alice)
            os.rename(parked, alice)
            swaps[0] += 1

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        for _ in range(500):
            env.scan(fix_maildirsize=True)
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 100
    assert os.listdir(outside) == []
    assert (bob / "maildirsize").read_bytes() == bob_before
    assert sorted(p.name for p in bob.iterdir()) == ["cur", "maildirsize", "new", "tmp"]

    result = env.scan(fix_maildirsize=True, full=True)  # the next run, undisturbed
    assert sorted(p.name for p in alice.iterdir()) == ["cur", "maildirsize", "new", "tmp"]
    assert (alice / "maildirsize").read_text() == "1S\n1000 1\n"
    assert os.stat(alice / "maildirsize").st_uid == USER
    assert result.readings[f"alice@{DOMAIN}"].bytes == 1000


def test_a_maildir_symlinked_to_another_users_never_gets_this_mailboxs_limit(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # zed owns the symlink and its directory; bob owns his Maildir and its maildirsize: the
    # symlink stays inside the spool, but leads to what zed does not own: zed's mailbox is
    # unknown (measured through it, zed's warning mail told zed bob's folders).
    bob = user_maildir(env, "bob", OTHER_USER, maildirsize="10485760S\n1000 1\n")
    zed = env.maildir("zed")
    zed.parent.mkdir(parents=True)
    os.chown(zed.parent, USER, USER)
    zed.symlink_to("../bob/Maildir")
    os.chown(zed, USER, USER, follow_symlinks=False)
    env.add("bob", Limits(10485760))
    address = env.add("zed", Limits(1048576))
    for _ in range(2):
        result = env.scan(fix_maildirsize=True, set_limit=True)
        assert (bob / "maildirsize").read_text() == "10485760S\n1000 1\n"
        assert result.maildirsize_fixed == []
        reading = result.readings[address]
        assert (reading.state, reading.bytes) == (State.UNKNOWN, 0)
        assert "symlink" in str(reading.usage.error) and "does not own" in str(reading.usage.error)
    unknown = [r.getMessage() for r in caplog.records if "usage unknown" in r.getMessage()]
    assert unknown and all(str(zed) in m for m in unknown)


def test_a_hardlinked_maildirsize_is_neither_read_nor_shown(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("1S\n31337 42\n")
    secret.chmod(0o600)
    alice = user_maildir(env, "alice", USER)
    os.link(secret, alice / "maildirsize")
    address = env.add("alice")
    result = env.scan(fix_maildirsize=True)
    reading = result.readings[address]
    assert reading.state is State.OK and reading.usage.maildirsize is None
    assert "31337" not in stored_text(env)
    assert secret.read_text() == "1S\n31337 42\n"
    assert os.stat(secret).st_nlink == 2  # not replaced either


def _scan_process(env: Env, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A scan as cron runs it. A FIFO read blocks for ever: the timeout only has to be finite,
    and generous enough for a machine busy with other tests (the swapper below is a busy loop)."""
    config = env.base / "quotagate.toml"
    config.write_text(f'[store]\nurl = "{env.config.store.url}"\n[spool]\nroot = "{env.spool}"\n[scan]\nworkers = 1\n')
    command = [sys.executable, "-m", "quotagate", "--config", str(config), "scan", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_fifo_maildirsize_never_blocks_a_scan(env: Env) -> None:
    alice = user_maildir(env, "alice", USER)
    os.mkfifo(alice / "maildirsize")
    os.mkfifo(alice / "cur" / "1700000000.M1P1.fifo:2,S")  # a FIFO where a message should be
    env.add("alice")
    bob = user_maildir(env, "bob", OTHER_USER, size=300)
    os.mkfifo(bob.parent / "mbox")  # not a mailbox, just clutter beside it
    env.add("bob")
    done = _scan_process(env, "--full")  # subprocess.TimeoutExpired (a failure) if it blocks
    assert done.returncode == 0, done.stderr
    readings = env.store.readings()
    assert readings[f"alice@{DOMAIN}"].bytes == 1000
    assert readings[f"bob@{DOMAIN}"].bytes == 300


@pytest.mark.slow
def test_a_maildirsize_swapped_for_a_fifo_during_scans_never_blocks_them(env: Env) -> None:
    alice = user_maildir(env, "alice", USER, maildirsize="1S\n1000 1\n")
    env.add("alice")
    stop = threading.Event()

    def swapper() -> None:
        fifo, regular = alice / "fifo", alice / "regular"
        while not stop.is_set():
            os.mkfifo(fifo)
            os.rename(fifo, alice / "maildirsize")
            regular.write_text("1S\n1000 1\n")
            os.chown(regular, USER, USER)
            os.rename(regular, alice / "maildirsize")

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        for _ in range(3):
            done = _scan_process(env, "--full", "--fix-maildirsize")
            assert done.returncode == 0, done.stderr
    finally:
        stop.set()
        thread.join()


def test_sizes_past_63_bits_make_one_mailbox_full_and_the_scan_goes_on(env: Env) -> None:
    forged = env.maildir("forged")
    inbox = maildir_folder(forged)
    for _ in range(10):  # each value fits, their sum does not
        add_message(inbox, 10, name_size=999_999_999_999_999_999)
    huge_name = user_maildir(env, "huge", USER, maildirsize=f"1S\n{2**64} 1\n")
    add_message(maildir_folder(huge_name), 25, unique=f"1700000000.M9P9.h,S={2**64}")
    user_maildir(env, "fine", OTHER_USER, size=500)
    for local in ("forged", "huge", "fine"):
        env.add(local)

    result = env.scan()
    forged_reading = result.readings[f"forged@{DOMAIN}"]
    assert forged_reading.state is State.OVER  # saturated: unknown would let a full mailbox take mail
    huge = result.readings[f"huge@{DOMAIN}"]
    assert (huge.state, huge.bytes, huge.usage.maildirsize) == (State.OK, 1025, None)  # by stat
    assert result.readings[f"fine@{DOMAIN}"].bytes == 500
    assert result.summary.unknown == 0
    stored = env.store.readings()
    assert stored[f"fine@{DOMAIN}"].bytes == 500 and stored[f"forged@{DOMAIN}"].state is State.OVER


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../../../etc", "outside [spool] root"),
        ("/etc/ssl", "outside [spool] root"),
        ("example.org/../../x", "outside [spool] root"),
        ("example.org/nul\0byte/Maildir", "control characters"),
        ("example.org/new\nline/Maildir", "control characters"),
    ],
)
def test_a_path_from_the_directory_that_leaves_the_spool_is_unknown(env: Env, path: str, reason: str) -> None:
    user_maildir(env, "fine", USER, size=500)
    env.add("fine")
    address = env.add("escape", Limits(1000), path=path)
    result = env.scan()
    reading = result.readings[address]
    assert reading.state is State.UNKNOWN and reason in (reading.reason or "")
    assert result.readings[f"fine@{DOMAIN}"].bytes == 500


@pytest.mark.parametrize("target", ["/etc", "../../../../../../etc", "/proc/self/cwd"])
def test_a_mailbox_root_symlinked_out_of_the_spool_is_unknown_and_nothing_of_it_is_stored(
    env: Env, target: str
) -> None:
    home = env.maildir("mallory").parent
    home.mkdir(parents=True)
    (home / "Maildir").symlink_to(target)
    address = env.add("mallory", Limits(1000))
    result = env.scan(fix_maildirsize=True)
    reading = result.readings[address]
    assert reading.state is State.UNKNOWN and "outside the spool root" in (reading.reason or "")
    assert reading.usage.folders == ()
    assert "passwd" not in stored_text(env) and "ssl" not in stored_text(env)


def test_symlinks_that_stay_in_the_spool_or_an_extra_root_are_followed(env: Env, tmp_path: Path) -> None:
    real = env.spool / "storage" / "alice"
    add_message(maildir_folder(real), 700)
    (env.spool / DOMAIN / "alice").mkdir(parents=True)
    env.maildir("alice").symlink_to("../../storage/alice")
    elsewhere = tmp_path / "other-disk" / "bob"
    add_message(maildir_folder(elsewhere), 900)
    (env.spool / DOMAIN / "bob").mkdir(parents=True)
    env.maildir("bob").symlink_to(elsewhere)
    alice, bob = env.add("alice"), env.add("bob")

    result = env.scan()
    assert result.readings[alice].bytes == 700
    assert result.readings[bob].state is State.UNKNOWN  # not beneath an allowed root
    spool = replace(env.config.spool, extra_roots=[tmp_path / "other-disk"])
    env.config = replace(env.config, spool=spool)
    assert env.scan(full=True).readings[bob].bytes == 900


@pytest.mark.skipif(not safefs._hardlinks_protected(), reason="needs fs.protected_hardlinks = 1")
def test_a_domain_symlink_of_roots_with_a_second_name_is_still_followed(env: Env) -> None:
    """Scenario: root's symlink puts a domain on a volume of its own; the admin then copies the
    spool with hard links (cp -al), so the symlink has two names. Expected: still the admin's
    (no user can link root's symlink while fs.protected_hardlinks is on): mailboxes measured.
    Before the fix (a review of 18b4101): taken for no one's, every mailbox behind it unknown."""
    volume = env.base / "vol2"
    maildir = volume / "example.org" / "alice" / "Maildir"
    maildir.mkdir(parents=True)
    add_message(maildir_folder(maildir), 500)
    os.symlink(volume / "example.org", env.spool / "example.org")
    env.configure(spool={"extra_roots": [str(volume)]}, scan={"workers": 1, "racy_seconds": 0})
    a = env.add("alice", Limits(1000, 0))
    os.link(env.spool / "example.org", env.base / "example.org.snapshot", follow_symlinks=False)
    r = env.scan(full=True).readings[a]
    assert (r.state, r.bytes) == (State.OK, 500), r.reason
