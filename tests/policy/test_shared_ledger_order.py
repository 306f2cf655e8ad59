"""What one host writes to the shared ledger never takes from what another host wrote there: a
reading older than the one kept, or a shorter reservation_seconds, changes nothing."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import redis as redispy

from quotagate.config import parse_config
from quotagate.model import State
from quotagate.policy.reservations import Reservations
from quotagate.policy.shared import RedisLedger, mailbox_keys
from tests.policy.conftest import DOMAIN, DUNNO, QUOTA, ROOMY, ROOMY_USED, make_site, request, run, wait_until
from tests.policy.test_shared import daemon, redis
from tests.policy.transactions import FITS, rcpt
from tests.servers.redis import RedisProcess
from tests.servers.redisproxy import proxied

__all__ = ["redis"]  # the fixture: a private redis-server for the module

pytestmark = pytest.mark.servers


def test_a_reading_sent_again_after_an_outage_never_overwrites_a_fresher_one(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: a storage host's `quotagate watch` with `[shared] url` follows 20,000
    mailboxes. Its link to Redis comes back after an outage: it sends every current reading
    again, a pipeline of 1,000 at a time (docs/scaling.md: "A storage host that comes back to
    an empty Redis sends every reading again"; at ten million mailboxes that takes minutes).
    `roomy` was full when that list was taken; its owner has just deleted mail, and the watch
    sends the new reading (1,000 bytes) at once, while the resend is still under way.
    Expected: Redis keeps the freshest reading of `roomy`, and an MX lets a message in.
    (The 'usage' op overwrote whatever Redis held: the resend's older, full reading, arriving
    after the fresh one, won, and every MX refused `roomy` with 552 Mailbox is full although it
    was nearly empty, until the stale reading passed max_usage_age.)"""
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)

    async def go() -> bytes:
        async with proxied(redis.host, redis.port) as link:
            config = parse_config(
                site.data() | {"shared": {"url": link.url, "prefix": site.base.name, "retry_seconds": 0.1}}
            )
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            now = storage.clock()
            others = [
                msgspec.structs.replace(reading, address=f"user{n}@{DOMAIN}", measured_at=now - 5)
                for n in range(20_000)
            ]
            full = msgspec.structs.replace(reading, bytes=QUOTA + 1, messages=2, measured_at=now - 5)
            assert full.state is not State.UNKNOWN
            storage.current = lambda: [*others, full]
            link.cut()
            await storage.start()  # Redis not reachable at start: an outage
            try:
                assert not storage.up
                link.mend()
                assert await wait_until(lambda: storage.up, 10, step=0.001)
                emptied = msgspec.structs.replace(reading, bytes=ROOMY_USED, messages=1, measured_at=storage.clock())
                storage.readings([emptied])  # the owner deleted mail: the watch's fresh reading
                assert await wait_until(
                    lambda: storage.settled and storage._resync is not None and storage._resync.done(), 30
                )
            finally:
                await storage.close()
        async with daemon(site, redis.url, "mx1") as mx:
            return await mx.ask(rcpt(0))

    assert run(go(), timeout=60) == DUNNO


def test_a_host_with_a_shorter_reservation_seconds_never_shortens_room_another_host_holds(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: two MX hosts share Redis; mx1 runs with reservation_seconds = 600, mx2 already
    has a new config with reservation_seconds = 1 (rolled out host by host). Four transactions
    through mx1 hold all of roomy's room; then mx2 holds a 1-byte message in it.
    Expected: the mailbox's keys in Redis keep mx1's lifetime (600 s and the margin), not mx2's
    (61 s: every hold set the keys' lifetime to the asking host's, and 61 s later mx1's
    reservations vanished with them, letting in another room's worth of mail)."""
    site = make_site(tmp_path)

    async def go() -> list[int]:
        async with daemon(site, redis.url, "mx1") as mx1, daemon(site, redis.url, "mx2", reservation_seconds=1) as mx2:
            assert [await mx1.ask(rcpt(n)) for n in range(FITS)] == [DUNNO] * FITS
            assert await mx2.ask(request(ROOMY, 1, client="198.51.100.50", instance="tiny")) == DUNNO
        client = redispy.Redis.from_url(redis.url)
        try:
            return [int(client.pttl(key)) for key in mailbox_keys(site.base.name, ROOMY)[:3]]
        finally:
            client.close()

    lifetimes = run(go(), timeout=60)
    assert min(lifetimes) > 600_000, lifetimes
