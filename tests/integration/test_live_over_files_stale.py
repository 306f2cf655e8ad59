"""A maildirsize read live under the ``files`` profile is current only when it claims more than
the last reading (deliveries since); claiming less, or exactly that reading, the reading stands,
as old as it is: the ``max_usage_age`` guard (usage nobody confirmed for that long could refuse
a mailbox emptied since: not believed) applies to it as to any reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.model import Action
from quotagate.policy.live import usage_age
from tests.integration.test_policy_service import World

ALICE = "alice@example.org"


@pytest.mark.parametrize("quota_plugin", [True, False], ids=["claims-less", "claims-the-reading"])
def test_a_stale_reading_is_not_made_fresh_by_a_live_maildirsize(tmp_path: Path, quota_plugin: bool) -> None:
    """Scenario: ``files`` profile (the default), max_usage_age 900 s. alice (limit 1,000
    bytes) holds 1,500 at a scan, her maildirsize agreeing (``1000S / 1500 1``): over quota,
    and her maildirsize is read live from then on. She then deletes the message through IMAP:
    with Dovecot's quota plugin (it appends ``-1500 -1``), or with a server that does not keep
    maildirsize (the file untouched: the ``files`` profile is for such sites). Scans stop (cron
    broken, the scan failing): 2,000 s pass with no new reading.

    Expected: as for a mailbox without a maildirsize, the reading is older than max_usage_age
    and not believed: DUNNO ("usage is older than max_usage_age")."""
    world = World(tmp_path)
    world.add("alice", 1000, 1500)
    root = world.maildir("alice")
    (root / "maildirsize").write_text("1000S\n1500 1\n")
    world.scan()
    assert world.ask(ALICE, 10).startswith("action=552"), "alice over quota at the scan"
    for message in (root / "cur").iterdir():
        message.unlink()
    if quota_plugin:
        with (root / "maildirsize").open("a") as f:
            f.write("-1500 -1\n")
    world.now += 2 * world.config.policy.max_usage_age + 200  # no scan since
    outcome = world.service.check(ALICE, 10)
    age = usage_age(outcome.usage, world.now) if outcome.usage else None
    assert outcome.decision.action is Action.DUNNO, (
        f"{outcome.decision.action.value} ({outcome.decision.reason}): usage {outcome.usage} taken as {age} s old,"
        f" the reading being {world.now - world.service.snapshot.readings[ALICE].measured_at:.0f} s old"
    )
