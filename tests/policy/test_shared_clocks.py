"""MX hosts whose clock differs from the storage host's."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from quotagate.config import parse_config
from quotagate.policy.reservations import Reservations
from quotagate.policy.shared import RedisLedger
from tests.policy.conftest import QUOTA, REJECT, ROOMY, make_site, run, wait_until
from tests.policy.test_shared import daemon, redis
from tests.policy.transactions import rcpt
from tests.servers.redis import RedisProcess

__all__ = ["redis"]  # the fixture: a private redis-server for the module

pytestmark = pytest.mark.servers


def test_an_mx_clock_ahead_still_weighs_the_storage_hosts_fresh_reading_in_redis(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: an MX host's clock runs 20 minutes ahead of the storage host's (no NTP). The
    storage host's `quotagate watch` has just written `roomy`'s reading to Redis: it is now
    full (one byte over its limit). docs/scaling.md: "All times are Redis's own (TIME inside
    the script); hosts send ages, never their clocks", and the storage host's own reading in
    Redis is the one an MX weighs.
    Expected: the MX refuses `roomy` (552 Mailbox is full) on the strength of that fresh
    reading, whatever its own clock says. (The MX first judged its own copy of the store's
    reading by its own clock: 20 minutes "old", past max_usage_age, it answered DUNNO without
    asking Redis, and the full mailbox took every message offered while the clock was off.)"""
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})

    async def go() -> bytes:
        storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
        await storage.start()
        try:
            full = msgspec.structs.replace(reading, bytes=QUOTA + 1, messages=2, measured_at=storage.clock())
            storage.readings([full])
            await wait_until(lambda: storage.settled)
        finally:
            await storage.close()
        async with daemon(site, redis.url, "mx1", clock=lambda: time.time() + 1200) as mx:
            return await mx.ask(rcpt(0))

    assert run(go()) == REJECT
