"""`quotagate serve` with `[watch] enabled` (the README's way with the daemon, instead of
quotagate-watch.service) through a short store outage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.policy.conftest import DOMAIN, REJECT, ROOMY, Serve, make_site, request, wait_for
from tests.servers.daemon import PolicyDaemon
from tests.servers.postgres import private_postgres_process
from tests.spoolgen import add_message

pytestmark = [pytest.mark.servers, pytest.mark.slow]

REFRESH = 8  # [policy] refresh_seconds: 30 by default
RESCAN = 6  # [watch] rescan_seconds: an hour by default


def test_live_usage_tracking_comes_back_after_the_store_does(tmp_path: Path) -> None:
    """Scenario: serve with `[watch] enabled = true` (the README's way with the daemon) on a
    PostgreSQL store. The database server is restarted (a package upgrade, a failover): down for a
    moment, up again well before the watch's next periodic rescan (`rescan_seconds`, an hour by
    default; 6 s here). After that rescan, roomy@ receives mail that fills it.
    Expected: the store is back, so nothing has changed for the daemon: roomy@ is refused within
    a second or two, as it is before the restart. (The rescan's first query ran on a pooled
    connection the restart killed; its error was no StoreError, the rescan task died and live
    tracking was dropped for good: answers lagged by `refresh_seconds` until serve restarted.)"""
    with private_postgres_process() as (postgres, server):
        site = make_site(tmp_path, postgres.create_database("watchoutage"))
        s = Serve(site, refresh_seconds=REFRESH)
        with s.config.open("a") as config:
            config.write(f"[watch]\nenabled = true\nflush_seconds = 0.1\nrescan_seconds = {RESCAN}\n")
        s.daemon.start()
        try:
            wait_for(lambda: "serving" in s.log(), what="serve started")
            assert s.ask(request(ROOMY)) != REJECT

            # With the watch, a delivery is in the answer within a second or two.
            folder = site.spool / DOMAIN / "roomy" / "Maildir"
            first = Path(os.fsdecode(add_message(folder, 20_000)))
            assert refused_within(s, 5), s.log()[-4000:]
            first.unlink()
            wait_for(lambda: s.ask(request(ROOMY)) != REJECT, timeout=10, what="roomy has room again")

            server.stop()  # a restart: down for a moment, between two rescans
            server.start()
            time.sleep(RESCAN + REFRESH + 2)  # a rescan ran with the store up, then a refresh

            add_message(folder, 20_000)  # past its 10,000 bytes
            stopped = "live usage tracking stopped" in s.log()
            assert refused_within(s, 5), f"not refused; tracking stopped: {stopped}\n{s.log()[-2000:]}"
        finally:
            s.daemon.stop()


def refused_within(s: Serve, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while s.ask(request(ROOMY)) != REJECT:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_quotagate_watch_survives_a_database_restart(tmp_path: Path) -> None:
    """Scenario: `quotagate watch` (quotagate-watch.service, for the classic lookup) on a
    PostgreSQL store; the database server is restarted, down for a moment. The watch follows
    the directory every `[watch] directory_seconds` (30 s by default; 1 s here).
    Expected: it logs that the store could not be asked and keeps watching, as its code means
    to. (The first query after the restart ran on a pooled connection the restart killed, its
    error was no StoreError, and `quotagate watch` exited 2: every database restart stopped the
    watch.)"""
    with private_postgres_process() as (postgres, server):
        site = make_site(tmp_path, postgres.create_database("watchrestart"))
        config = tmp_path / "quotagate.toml"
        config.write_text(
            site.toml(listen=["127.0.0.1:0"]).replace("[scan]\n", f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n')
            + "[watch]\nflush_seconds = 0.1\ndirectory_seconds = 1\n"
        )
        watch = PolicyDaemon(config, None, tmp_path / "watch.log", "watch", "watching")
        watch.start()
        try:
            time.sleep(1.5)
            server.stop()
            server.start()
            time.sleep(4)
            assert watch.proc is not None
            assert watch.proc.poll() is None, watch.log()[-3000:]
        finally:
            watch.stop()


def test_a_database_restart_is_one_clear_log_line_not_a_traceback(tmp_path: Path) -> None:
    """Scenario: serve on a PostgreSQL store; the database server is restarted (down for a
    moment). The daemon's next refresh runs its first query on a pooled connection the
    restart killed.
    Expected: no connection the restart closed is used (the pool checks it first), and a query
    the database fails is, like any store outage, one line saying the store cannot be asked,
    never a traceback; the next refresh finds the store again. (The SQLAlchemy
    OperationalError was no StoreError: it went to the `except Exception` branch, logged as if
    it were a bug, a 60-line traceback in the journal at every database restart.)"""
    with private_postgres_process() as (postgres, server):
        site = make_site(tmp_path, postgres.create_database("restart"))
        s = Serve(site, refresh_seconds=0.5)
        s.daemon.start()
        try:
            wait_for(lambda: "serving" in s.log(), what="serve started")
            server.stop()
            server.start()
            time.sleep(2)  # refreshes meeting the restarted server, and the next ones
            assert s.ask(request(ROOMY)) != REJECT
            assert "Traceback" not in s.log(), s.log()[-3000:]
        finally:
            s.daemon.stop()
