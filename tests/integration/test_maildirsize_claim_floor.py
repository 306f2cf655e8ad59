"""Under a profile that counts the files, a maildirsize read live is never believed below the
last reading, nor taken as a measurement of the files: a user who puts back, after each
delivery, the maildirsize the last scan found (same inode, written in place: no scan sees it)
would otherwise have the in-flight room of every delivery since the scan let go."""

from __future__ import annotations

import time
from pathlib import Path

from msgspec.structs import replace

from quotagate.policy.codec import PolicyRequest
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from tests.integration.test_policy_service import World
from tests.spoolgen import add_message

ALICE = "alice@example.org"
AT_SCAN = "1000S\n900 1\n"  # what maildirsize said (and the files held) at the last scan


def _rewrite_in_place(path: Path, text: str) -> None:
    with path.open("r+") as f:
        f.truncate(0)
        f.write(text)


def _exim(world: World, attributes: dict[str, str]) -> str:
    return world.service.answer(PolicyRequest({"client_address": "192.0.2.9", **attributes}))


def test_a_maildirsize_put_back_to_its_scanned_content_does_not_forget_deliveries(tmp_path: Path) -> None:
    """Attack: alice (limit 1,000 bytes) holds 900 at a scan, her maildirsize agreeing. Through
    Exim (policy ACLs, event_action delivery hints), a 100-byte message is let in and delivered
    (the agent appends "100 1" to maildirsize). Alice then writes back ``1000S\\n900 1\\n`` in
    place, and does so after every delivery. Expected: once her files hold 1,000 bytes, the
    next 100-byte message is refused (the claim of 900 is below what the files hold now, the
    scan's reading plus the deliveries seen since). Now every message is let in: the claim is
    not below the last reading, so it is believed, as of now, and each delivered message's
    room goes."""
    world = World(tmp_path)
    world.config = replace(world.config, scan=replace(world.config.scan, racy_seconds=0))
    world.service = PolicyService(world.config, Metrics(), clock=lambda: world.now)
    world.add("alice", 1000, 900)
    root = world.maildir("alice")
    (root / "maildirsize").write_text(AT_SCAN)
    world.scan()
    let_in = 0
    for n in range(5):
        instance = f"{n}.exim"
        answer = _exim(
            world,
            {
                "request": "smtpd_access_policy",
                "protocol_state": "RCPT",
                "recipient": ALICE,
                "size": "100",
                "instance": instance,
            },
        )
        if answer != "DUNNO":
            break
        let_in += 1
        # The DATA ACL's last statement: the message was accepted, its room goes in flight.
        _exim(
            world,
            {"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "size": "100", "instance": instance},
        )
        add_message(root, 100, where="new")  # delivered; the agent updates maildirsize
        with (root / "maildirsize").open("a") as f:
            f.write("100 1\n")
        world.now += 1
        _exim(world, {"request": "quotagate_delivery", "recipient": ALICE})  # event_action
        world.now += 1
        time.sleep(0.02)
        _rewrite_in_place(root / "maildirsize", AT_SCAN)  # alice puts back what the scan saw
    files = sum(p.stat().st_size for sub in ("cur", "new") for p in (root / sub).iterdir())
    assert let_in <= 1, f"{let_in} messages of 100 bytes let in; alice's files now hold {files} of 1000 bytes"
