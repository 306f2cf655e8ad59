"""``scan --every`` and the scan lock, with real processes, a real spool and a real SQLite store."""

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from quotagate.cli import main
from quotagate.scanlock import run_every, scan_lock
from tests.spoolgen import add_message, maildir_folder

EXE = str(Path(sys.executable).parent / "quotagate")
SUMMARY = "scan ("


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    add_message(maildir_folder(spool / "example.org" / "alice" / "Maildir"), 100)
    config = tmp_path / "q.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[scan]\nlock_file = "{tmp_path}/run/scan.lock"\n'
    )
    assert main(["--config", str(config), "mailbox", "add", "alice@example.org", "--quota", "1M"]) == 0
    return config


def scan_count(tmp_path: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/q.db")
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM quotagate_scan")).scalar_one())
    finally:
        engine.dispose()


def messages(config: Path, capsys: pytest.CaptureFixture[str]) -> int:
    assert main(["--config", str(config), "report", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    return int(row["messages"])


@pytest.mark.slow
def test_every_with_count_runs_that_many_scans(setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    started = time.monotonic()
    assert main(["--config", str(setup), "scan", "--every", "1s", "--count", "3"]) == 0
    elapsed = time.monotonic() - started
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(SUMMARY)]
    assert len(lines) == 3 and all("1 mailboxes" in line for line in lines)
    assert scan_count(tmp_path) == 3
    assert 2 <= elapsed < 5  # start to start: two periods between three scans, no sleep after the last


@pytest.mark.slow
def test_loop_picks_up_new_mail_and_stops_on_sigterm(
    setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def wait_for(condition_met: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if condition_met():
                return
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}")

    with subprocess.Popen(
        [EXE, "--config", str(setup), "scan", "--every", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            wait_for(lambda: scan_count(tmp_path) >= 1, "the first scan")
            assert messages(setup, capsys) == 1
            add_message(maildir_folder(tmp_path / "spool" / "example.org" / "alice" / "Maildir"), 50)
            wait_for(lambda: messages(setup, capsys) == 2, "a later round to see the new message")
            assert proc.poll() is None
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert time.monotonic() - stopping < 2
    assert sum(line.startswith(SUMMARY) for line in out.splitlines()) >= 2
    assert "SIGTERM received: stopping" in err


@pytest.mark.slow
def test_lock_held_one_shot_exits_75_and_loop_skips(
    setup: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    lock_file = tmp_path / "run" / "scan.lock"
    lock_file.parent.mkdir()
    with open(lock_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        one_shot = subprocess.run([EXE, "--config", str(setup), "scan"], capture_output=True, text=True)
        assert one_shot.returncode == 75
        assert f"another scan is running (lock {lock_file} held by pid {os.getpid()})" in one_shot.stderr
        assert SUMMARY not in one_shot.stdout

        caplog.set_level(logging.INFO)
        assert main(["--config", str(setup), "scan", "--every", "0.1s", "--count", "2"]) == 0
        assert [r.getMessage() for r in caplog.records if "skipping this round" in r.getMessage()] == [
            f"another scan is running (lock {lock_file} held by pid {os.getpid()}): skipping this round"
        ] * 2
        assert scan_count(tmp_path) == 0
    # closing the file released the lock
    again = subprocess.run([EXE, "--config", str(setup), "scan"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(SUMMARY)
    assert lock_file.read_text() == ""  # the holder's pid is cleared on release


def test_lock_file_that_cannot_be_opened_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "q.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{tmp_path}"\n'
        f'[scan]\nlock_file = "{blocker}/sub/scan.lock"\n'
    )
    assert main(["--config", str(config), "scan"]) == 2
    assert "scan.lock_file: cannot open" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["soon", "0", "-5s", "5x", ""])
def test_bad_every_is_a_usage_error(setup: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(setup), "scan", "--every", value]) == 2
    assert "--every" in capsys.readouterr().err


def test_count_needs_every(setup: Path) -> None:
    assert main(["--config", str(setup), "scan", "--count", "2"]) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_a_round_lets_it_finish(sig: signal.Signals) -> None:
    code = (
        "import os, signal, time\n"
        "from quotagate.scanlock import run_every\n"
        "def round_():\n"
        f"    os.kill(os.getpid(), {int(sig)})\n"
        "    time.sleep(0.3)\n"
        "    print('round finished', flush=True)\n"
        "print(run_every(0.1, round_))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "round finished\n1\n"


def test_a_round_longer_than_the_period_starts_the_next_at_once(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    assert run_every(0.05, lambda: time.sleep(0.15), count=2) == 2
    assert time.monotonic() - started < 0.45
    assert any("longer than the period" in r.getMessage() for r in caplog.records)


def test_the_lock_is_released_while_a_stuck_worker_still_holds_its_descriptor(tmp_path: Path) -> None:
    # A scan worker forked while the lock is held shares its descriptor; one stuck in the kernel
    # (a dead mount) outlives the scan. The next scan must still get the lock.
    lock_file = tmp_path / "scan.lock"
    with scan_lock(lock_file):
        stuck = os.fork()
        if stuck == 0:  # the child: holds the inherited descriptor until killed
            time.sleep(60)
            os._exit(0)
    try:
        with scan_lock(lock_file):
            pass
    finally:
        os.kill(stuck, signal.SIGKILL)
        os.waitpid(stuck, 0)
