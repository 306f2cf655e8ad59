"""A folder's own client share is weighed per copy in the shared ledger. Room a daemon held alone
while Redis was away, written back (the op 'restore'), carries its copy: it counts in the
client's share of the folder as it would had Redis never gone away."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.policy.conftest import BUSY, DUNNO, ROOMY, request, run, wait_until
from tests.policy.test_shared import daemon, site_with_a_big_roomy
from tests.servers.redis import private_redis

pytestmark = pytest.mark.servers

ATTACKER = "203.0.113.5"
ARCHIVE = ROOMY.replace("@", "+Archive@")


def test_room_held_for_a_folder_while_redis_was_away_counts_against_the_folders_share_once_written_back(
    tmp_path: Path,
) -> None:
    """Scenario: roomy (1,000,000 bytes) has a folder Archive with a limit of 10,000 of its own;
    one client may hold 1,000 of it (client_hold 10%). Redis goes away; the daemon decides
    alone, and the client's RCPT TO:<roomy+Archive> SIZE=900 (transaction t1, no DATA yet) is
    held by the daemon. Redis comes back (empty): the daemon writes that held room back. The
    same client then asks RCPT TO:<roomy+Archive> SIZE=600 in transaction t2.

    Expected: 452 busy (900 + 600 = 1,500 > its 1,000 share of the folder), as it is when
    Redis never went away (tests/policy/test_shared.py
    test_a_folders_own_share_and_room_are_weighed_per_folder_in_the_ledger): the written-back
    900 bytes count in the client's share of the folder."""
    site = site_with_a_big_roomy(tmp_path)

    with private_redis() as redis:

        async def go() -> list[bytes]:
            folders = [{"match": "Archive", "quota": "10000"}]
            async with daemon(site, redis.url, "mx1", folders=folders) as a:
                assert a.up() == 1
                redis.kill()
                await wait_until(lambda: a.up() == 0, timeout=10)  # or found at the next call
                during = await a.ask(request(ARCHIVE, 900, client=ATTACKER, instance="t1"))
                redis.start()
                assert await wait_until(lambda: a.up() == 1 and len(a.service.reservations) == 0, timeout=10), (
                    "the held room was not written back"
                )
                after = await a.ask(request(ARCHIVE, 600, client=ATTACKER, instance="t2"))
                return [during, after]

        answers = run(go())
    assert answers == [DUNNO, BUSY], f"answers: {answers}"
