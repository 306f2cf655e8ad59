"""A mail user edits their own maildirsize in place after a scan found it agreeing with the files.

The daemon (and ``quotagate check``) reads a trusted maildirsize live. An in-place rewrite
(``printf ... > maildirsize``: same inode, the Maildir's ctime unchanged) is not seen by an
incremental scan, which keeps the reading that says the file agrees. Under the default ``files``
profile the files count: a live claim below what the files held at the last reading is not
believed (counted in quotagate_policy_claims_below_files), the reading stands."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from msgspec.structs import replace

from quotagate.model import State
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.scan import run_scan
from tests.integration.test_policy_service import FULL, World


def alice_trusted(tmp_path: Path, used: int) -> tuple[World, Path]:
    """alice (quota 1000) holding ``used`` bytes, with a maildirsize that agrees, scanned (so the
    daemon reads it live); returns the world and her Maildir."""
    world = World(tmp_path)
    # Stamps taken at once are kept (not "racy"): what a scan minutes after the delivery does.
    world.config = replace(world.config, scan=replace(world.config.scan, racy_seconds=0))
    world.service = PolicyService(world.config, Metrics(), clock=lambda: world.now)
    world.add("alice", 1000, used)
    root = world.maildir("alice")
    (root / "maildirsize").write_text(f"1000S\n{used} 1\n")
    world.scan()  # full scan: the maildirsize agrees with the files
    return world, root


def _rewrite_in_place(path: Path, text: str) -> None:
    """What ``printf '...' > maildirsize`` does: O_TRUNC on the same inode."""
    before = os.stat(path).st_ino
    with path.open("r+") as f:
        f.truncate(0)
        f.write(text)
    assert os.stat(path).st_ino == before


@pytest.mark.parametrize("lie", ["1000S\n0 0\n", "1000S\n1500 1\n-1500 -1\n"])
def test_a_maildirsize_lowered_in_place_after_a_scan_does_not_let_a_full_mailbox_take_mail(
    tmp_path: Path, lie: str
) -> None:
    """Attack: alice is over quota by her files (1500 of 1000 bytes) and her maildirsize says so
    (the scan trusts it: it agrees). She then rewrites maildirsize in place to claim 0 bytes.
    The next incremental scan sees no change (directory ctimes untouched) and keeps trusting
    the file; the daemon reads it live and accepts mail for a mailbox the files show full.

    Expected: the mailbox stays refused (the files, which did not shrink, are over the limit);
    a live claim below what the files held is not believed under the ``files`` profile, or the
    scan notices the maildirsize changed."""
    world, root = alice_trusted(tmp_path, 1500)  # over quota
    assert world.ask("alice@example.org") == FULL
    reading = world.store.readings()["alice@example.org"]
    assert reading.state is State.OVER and reading.usage.maildirsize is not None

    time.sleep(0.05)
    _rewrite_in_place(root / "maildirsize", lie)
    # The periodic incremental scan, as cron runs it (racy stamps aside: the test's files are old).
    run_scan(world.config, world.store)
    world.service.snapshot = load_snapshot(world.store)
    world.now = time.time() + 1
    assert world.store.readings()["alice@example.org"].state is State.OVER  # the scan still says over
    answer = world.ask("alice@example.org", 100)
    assert answer == FULL, f"the daemon took the user's claim over the files: {answer}"
