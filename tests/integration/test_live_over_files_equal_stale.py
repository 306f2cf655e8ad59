"""Under the ``files`` profile a live maildirsize is current only when it claims more than the
stored reading (deliveries since); claiming exactly that reading it adds nothing, and the
reading stands as old as it is: the stale guard (``max_usage_age``) applies."""

from __future__ import annotations

from pathlib import Path

from quotagate.model import Action
from quotagate.policy.live import usage_age
from tests.integration.test_policy_service import World

ALICE = "alice@example.org"


def test_a_stale_reading_is_not_made_fresh_by_an_unchanged_maildirsize(tmp_path: Path) -> None:
    """Scenario: ``files`` profile (the default), max_usage_age 900 s. alice (limit 1,000
    bytes) holds 1,500 at a scan, her maildirsize agreeing (``1000S / 1500 1``, written by the
    MTA's transport at delivery): over quota, and her maildirsize is read live from then on.
    She then deletes the message through IMAP with a server that does not keep maildirsize
    (quotagate's ``files`` profile is for exactly such sites: the files count, not the
    claims), so the file is untouched; and scans stop (cron broken): 2,000 s pass with no new
    reading.

    Expected: the live maildirsize adds nothing to the reading (it claims the very numbers
    of the 2,000-s-old reading and has not changed since it), so the usage is that reading,
    older than max_usage_age: DUNNO, as README says ("Usage older than max_usage_age ... answers
    DUNNO"; "Stale usage is not a refusal") and as the same mailbox gets when its maildirsize
    claims one byte less (tests/integration/test_live_over_files_stale.py)."""
    world = World(tmp_path)
    world.add("alice", 1000, 1500)
    root = world.maildir("alice")
    (root / "maildirsize").write_text("1000S\n1500 1\n")
    world.scan()
    assert world.ask(ALICE, 10).startswith("action=552"), "alice over quota at the scan"
    for message in (root / "cur").iterdir():
        message.unlink()  # expunged; maildirsize untouched
    world.now += 2 * world.config.policy.max_usage_age + 200  # no scan since
    outcome = world.service.check(ALICE, 10)
    age = usage_age(outcome.usage, world.now) if outcome.usage else None
    assert outcome.decision.action is Action.DUNNO, (
        f"{outcome.decision.action.value} ({outcome.decision.reason}): usage {outcome.usage} taken as {age} s old,"
        f" the reading being {world.now - world.service.snapshot.readings[ALICE].measured_at:.0f} s old"
    )
