"""After reading a Maildir (or an mbox home) its folders are listed and stamped again: a folder
renamed meanwhile makes the mailbox read again, and unknown if it keeps happening. A folder that
only changed (a delivery into new/, an IMAP client setting a flag: a rename within cur/) is
read again a few times, then taken as last read: a busy mailbox, or a user whose client keeps
changing flags, stays measured (unknown, one under quota would never be refused)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from quotagate.usage import maildir, mbox
from quotagate.usage.mailbox import measure
from quotagate.usage.safefs import Roots
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder, write_mbox


def _measure(root: Path, spool: Path, fmt: str = "auto") -> tuple[bool, int, str | None]:
    found = measure(str(root), fmt, None, 0, Roots.of(spool), None, "Maildir")  # type: ignore[arg-type]
    usage = found.usage
    return usage.known, usage.all_bytes, usage.error or usage.warning


def test_a_delivery_during_each_pass_does_not_make_a_maildir_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (or plain traffic): mail keeps arriving in alice's INBOX while her Maildir is
    measured; one message lands in new/ during each pass, after INBOX was read (a mailbox
    taking a message every few hundred ms while a pass over its many folders takes longer).
    Expected: the mailbox is measured (mail only arrived: nothing was moved out of sight; the
    folder is racy and read again next scan), with at least the 1,000 bytes it held before the
    scan; never unknown at every scan while the traffic lasts."""
    spool = tmp_path / "spool"
    root = spool / DOMAIN / "alice" / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 1000)
    add_message(maildir_folder(root, "Sent"), 10)
    read = maildir.read_folder

    def read_then_deliver(folder_fd: int, name: str, *args: object, **kwargs: object) -> object:
        result = read(folder_fd, name, *args, **kwargs)  # type: ignore[arg-type]
        if name == maildir.INBOX:
            add_message(inbox, 100, where="new")  # the MTA delivers meanwhile
        return result

    monkeypatch.setattr(maildir, "read_folder", read_then_deliver)
    known, counted, said = _measure(root, spool)
    assert known and counted >= 1010, f"known={known}, {counted} bytes, saying {said!r}"


def test_an_imap_client_setting_flags_during_each_pass_does_not_make_a_maildir_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: alice's IMAP client (or alice on purpose: STORE +FLAGS/-FLAGS \\Seen in a loop,
    no shell needed) renames a message within INBOX's cur/ during each pass. No mail moves
    between folders, no folder is renamed. Expected: measured, 1,010 bytes."""
    spool = tmp_path / "spool"
    root = spool / DOMAIN / "alice" / "Maildir"
    inbox = maildir_folder(root)
    message = Path(os.fsdecode(add_message(inbox, 1000, flags="2,")))
    add_message(maildir_folder(root, "Sent"), 10)
    read = maildir.read_folder
    flips = [message]

    def read_then_flag(folder_fd: int, name: str, *args: object, **kwargs: object) -> object:
        result = read(folder_fd, name, *args, **kwargs)  # type: ignore[arg-type]
        if name == maildir.INBOX:
            now = flips[-1]
            other = now.with_name(now.name[:-1] if now.name.endswith("S") else now.name + "S")
            os.rename(now, other)  # \Seen set or cleared
            flips.append(other)
        return result

    monkeypatch.setattr(maildir, "read_folder", read_then_flag)
    known, counted, said = _measure(root, spool)
    assert known and counted == 1010, f"known={known}, {counted} bytes, saying {said!r}"


def test_mail_appended_to_an_mbox_during_each_pass_does_not_make_the_home_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in an mbox home: a message is appended to ``inbox`` during each pass (the
    agent delivering). Expected: measured, with at least what the home held before."""
    spool = tmp_path / "spool"
    home = spool / DOMAIN / "alice"
    write_mbox(home / "inbox", ["a" * 500])
    write_mbox(home / "Archive", ["b" * 500])
    before = sum(p.stat().st_size for p in home.iterdir())
    read = mbox.read_file_folder

    def read_then_append(fd: int, name: str, *args: object, **kwargs: object) -> object:
        result = read(fd, name, *args, **kwargs)  # type: ignore[arg-type]
        if name == "inbox":
            with (home / "inbox").open("a") as f:
                f.write("From sender@example.net Thu Jan  1 00:00:00 2026\nSubject: x\n\nnew\n\n")
        return result

    monkeypatch.setattr(mbox, "read_file_folder", read_then_append)
    known, counted, said = _measure(home, spool, "mbox")
    assert known and counted >= before, f"known={known}, {counted} of {before} bytes, saying {said!r}"


@pytest.mark.skipif(os.geteuid() != 0, reason="scans as root, as in production")
def test_a_user_toggling_a_flag_in_a_loop_keeps_a_filling_mailbox_from_being_refused(env: Env) -> None:
    """Attack for real, through scans: alice (10,000-byte limit) is under quota at a scan. Her
    IMAP client then toggles \\Seen on one message in a loop (a rename within cur/, as
    Dovecot does for STORE), while 20,000 bytes of mail land. Expected: the next full scans find
    her over quota (found unknown at every scan, "kept changing", she would never be refused)."""
    root = env.maildir("alice")
    inbox = maildir_folder(root)
    for _ in range(300):  # a little work per pass
        add_message(maildir_folder(root, "Other"), 1)
    message = Path(os.fsdecode(add_message(inbox, 5000, flags="2,")))
    address = env.add("alice", Limits(10_000))
    assert env.scan(full=True).readings[address].state is State.OK
    add_message(inbox, 20_000, where="new")
    # The IMAP server is a process of its own: its renames do not wait on this one's GIL.
    toggler = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "a, b = sys.argv[1], sys.argv[1] + 'S'\n"
            "while True:\n"
            "    os.rename(a, b); os.rename(b, a)\n",
            str(message),
        ]
    )
    states = []
    try:
        time.sleep(0.2)
        for _ in range(5):
            states.append(env.scan(full=True).readings[address].state)
    finally:
        toggler.kill()
        toggler.wait()
    assert states.count(State.OVER) == len(states), f"scans found alice {[s.value for s in states]}"
