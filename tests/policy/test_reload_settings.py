"""SIGHUP (``systemctl reload quotagate``) after the admin changed the config: what a reload
takes, and what it says needs a restart."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.policy.conftest import DUNNO, ROOMY, make_site, wait_for
from tests.policy.conftest import Serve as Daemon
from tests.policy.shared_serve import Serve, held, held_bytes
from tests.policy.test_shared import redis
from tests.policy.transactions import MESSAGE, rcpt
from tests.servers.redis import RedisProcess, private_redis

__all__ = ["redis"]  # the fixture: a private redis-server for the module

pytestmark = pytest.mark.servers


def test_a_reload_that_shortens_reservation_seconds_applies_to_room_held_in_redis(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: an MX runs `quotagate serve` with `[shared] url` and the default
    `reservation_seconds = 600`; the admin lowers it to 30 (the README's advice for sites whose
    milters refuse mail after END-OF-MESSAGE) and reloads with SIGHUP, which the README says
    reloads the config. A check is then accepted and holds its room.
    Expected: the room is held for 30 s, as the daemon's own reservations are after the same
    reload (PolicyService.reconfigure sets reservations.seconds). (The Redis ledger kept the
    reservation_seconds it was started with: the room was held in Redis for 600 s, and every
    other MX host deferred mail for it 20 times longer than configured.)"""
    site = make_site(tmp_path)
    prefix = f"{site.base.name}-rs"
    serve = Serve(site, redis.url, prefix, reservation_seconds=600)
    serve.start()
    try:
        serve.write(redis.url, prefix, reservation_seconds=30)
        serve.reload()
        assert serve_ask(serve, rcpt(0)) == DUNNO
        rows = held(redis.url, prefix, ROOMY)
        assert len(rows) == 1, rows
        (row,) = rows.values()
        assert row["b"] == MESSAGE
        lifetime = (row["e"] - row["t"]) / 1000
        assert lifetime == pytest.approx(30, abs=1), f"room held in Redis for {lifetime:.0f}s after the reload to 30s"
    finally:
        serve.daemon.stop()


def test_a_reload_with_a_new_shared_url_holds_room_in_the_new_redis(tmp_path: Path, redis: RedisProcess) -> None:
    """Scenario: the MX hosts move their shared ledger to a new Redis (or a new key prefix,
    e.g. to stop colliding with another site on the same Redis): the admin edits `[shared] url`
    on each host and reloads with SIGHUP. The other hosts already use the new Redis.
    Expected: after the reload this daemon weighs and holds room in the new Redis, where the
    other hosts look, or, if that needs a restart, it says so in its log (as it does for a
    changed `policy.listen`). (The reload logged "config reloaded" and the daemon kept using
    the old Redis silently: its holds were invisible to the hosts on the new one.)"""
    site = make_site(tmp_path)
    prefix = f"{site.base.name}-url"
    with private_redis() as new:
        serve = Serve(site, redis.url, prefix)
        serve.start()
        try:
            serve.write(new.url, prefix)
            serve.reload()
            assert serve_ask(serve, rcpt(0)) == DUNNO
            in_new, in_old = held_bytes(new.url, prefix, ROOMY), held_bytes(redis.url, prefix, ROOMY)
            told = [line for line in serve.daemon.log().splitlines() if "shared" in line and "restart" in line]
            assert in_new == MESSAGE or told, (
                f"after the reload to {new.url}: {in_new} bytes held there, {in_old} in the old Redis, "
                f"nothing logged about [shared]:\n{serve.daemon.log()[-1500:]}"
            )
        finally:
            serve.daemon.stop()


def serve_ask(serve: Serve, data: bytes) -> bytes:
    from tests.policy.conftest import ask

    return ask(serve.port, data)


def test_enabling_the_watch_and_reloading_starts_it_or_says_a_restart_is_needed(tmp_path: Path) -> None:
    """Scenario: serve runs without `[watch]`. Following the README ("with the daemon, set
    `[watch] enabled = true`"), the admin sets it and runs `systemctl reload quotagate`
    (ExecReload sends SIGHUP).
    Expected: the daemon starts following the spool, or says that this setting takes a restart,
    as it does for a changed `policy.listen` ("restart quotagate serve to listen elsewhere").
    (The reload logged only "config reloaded": nothing watched the spool, and nothing said so.)"""
    site = make_site(tmp_path)
    s = Daemon(site)
    s.daemon.start()
    try:
        wait_for(lambda: "serving" in s.log(), what="serve started")
        with s.config.open("a") as config:
            config.write("[watch]\nenabled = true\nflush_seconds = 0.1\n")
        s.signal_and_wait_for_log(signal.SIGHUP, "config reloaded")

        def told() -> bool:
            after = s.log().split("serving", 1)[1]
            return "watching" in after or ("watch" in after and "restart" in after)

        wait_for(told, timeout=5, what=f"the watch started, or a word that it needs a restart:\n{s.log()}")
    finally:
        s.daemon.stop()
