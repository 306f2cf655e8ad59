"""A mail user whose mailbox is over quota makes their own maildirsize unreadable to the daemon.

README ("Security model"): a user can make their own mailbox unknown, but "a mailbox that was
under quota is then not refused by quotagate ..., one that was over stays over". The daemon
reads a trusted maildirsize live; when that read fails (Unreadable), the last reading decides, as
without live reads. (Before, the answer was DUNNO whatever that reading said.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from quotagate.model import State
from tests.integration.test_live_maildirsize_lie import alice_trusted
from tests.integration.test_policy_service import FULL, message


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _hard_link(path: Path) -> None:
    os.link(path, path.parent.parent / "kept-maildirsize")  # a second link, outside the Maildir


def _symlink(path: Path) -> None:
    path.unlink()
    os.symlink("/dev/null", path)


@pytest.mark.parametrize("spoil", [_fifo, _hard_link, _symlink], ids=["fifo", "hard-link", "symlink"])
def test_an_over_quota_mailbox_whose_maildirsize_is_spoiled_is_still_refused(
    tmp_path: Path, spoil: Callable[[Path], None]
) -> None:
    """Scenario: alice is over quota by her files (1500 of 1000 bytes); her maildirsize agrees,
    so the scan trusts it and the daemon reads it live at each RCPT. Right after the scan she
    replaces it with a FIFO, gives it a second hard link, or makes it a symlink (all in her own
    Maildir/home).
    Expected: the mailbox stays refused (552) until the next reading: it was over, and README
    promises that a mailbox its owner makes unknown "that was over stays over".
    Before the fix: the live read failed (Unreadable) and the daemon answered DUNNO: alice's
    full mailbox took mail again whenever she liked."""
    world, root = alice_trusted(tmp_path, 1500)
    assert world.store.readings()["alice@example.org"].state is State.OVER
    assert world.ask("alice@example.org", 100) == FULL

    spoil(root / "maildirsize")
    answer = world.ask("alice@example.org", 100)
    assert answer == FULL, f"an over-quota mailbox whose owner spoiled its maildirsize got {answer!r}"


def test_a_mailbox_the_daemon_read_over_stays_refused_when_its_owner_spoils_the_file(tmp_path: Path) -> None:
    """Scenario: alice (quota 1000) holds 500 bytes at the scan; her maildirsize agrees, so the
    daemon reads it live. A 1000-byte delivery lands after the scan (the file now says 1500): the
    daemon reads that and refuses her (552). She then replaces her maildirsize with a FIFO.
    Expected: still refused: the last value the daemon read from the file said over.
    Before the fix: DUNNO. The unreadable file fell back to the store's reading from the scan
    (500, under): a mailbox that filled up since the last scan took mail again whenever its
    owner spoiled the file, until the next scan."""
    world, root = alice_trusted(tmp_path, 500)
    assert world.ask("alice@example.org") == "action=DUNNO"

    message(root, "2.M2.alice", 1000)  # a delivery after the scan, counted by the delivery agent
    with (root / "maildirsize").open("a") as f:
        f.write("1000 1\n")
    assert world.ask("alice@example.org") == FULL  # the daemon knows she is over

    (root / "maildirsize").unlink()
    os.mkfifo(root / "maildirsize")
    answer = world.ask("alice@example.org")
    assert answer == FULL, f"a mailbox the daemon last read over quota got {answer!r} once its owner spoiled the file"
