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
from msgspec.structs import replace

from quotagate.model import State
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from tests.integration.test_policy_service import FULL, World


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
    world = World(tmp_path)
    world.config = replace(world.config, scan=replace(world.config.scan, racy_seconds=0))
    world.service = PolicyService(world.config, Metrics(), clock=lambda: world.now)
    world.add("alice", 1000, 1500)
    root = world.maildir("alice")
    (root / "maildirsize").write_text("1000S\n1500 1\n")
    world.scan()
    assert world.store.readings()["alice@example.org"].state is State.OVER
    assert world.ask("alice@example.org", 100) == FULL

    spoil(root / "maildirsize")
    answer = world.ask("alice@example.org", 100)
    assert answer == FULL, f"an over-quota mailbox whose owner spoiled its maildirsize got {answer!r}"
