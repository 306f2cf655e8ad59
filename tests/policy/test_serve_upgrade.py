"""An upgrade of quotagate that adds a migration, on quotagate's own SQLite store ("SQLite
migrates itself"): the Debian package's postinst runs `systemctl try-restart` on the daemon and
the watch at once, before any scan has run the new code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from quotagate.store import schema
from tests.policy.conftest import FULL, REJECT, Serve, make_site, request, wait_for

pytestmark = [pytest.mark.slow]


def as_before_the_last_migration(db: Path) -> None:
    """The store as the previous release left it: the last migration not applied yet (its
    tables and columns not made; a widened column is as wide in SQLite either way)."""
    last = schema.MIGRATIONS[-1]
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM quotagate_schema_version WHERE version = ?", (last.version,))
        for table in last.tables:
            conn.execute(f"DROP TABLE {table.name}")
        for table, column in last.columns:
            conn.execute(f"ALTER TABLE {table.name} DROP COLUMN {column}")
    conn.close()


@pytest.mark.parametrize("watch", [False, True], ids=["serve", "serve-with-watch"])
def test_the_daemon_restarted_by_an_upgrade_still_refuses_a_full_mailbox(tmp_path: Path, watch: bool) -> None:
    """Scenario: quotagate's own SQLite store, written by the previous release (a schema version
    behind). The package is upgraded; postinst try-restarts quotagate.service, whose new code
    wants the latest version. No scan has run yet (the timer fires within 5 minutes).
    Expected: the README says quotagate's own SQLite file "migrates itself" and a new install
    "needs no db migrate": the daemon migrates it (or answers from it) and keeps refusing the
    full mailbox with 552. (serve opened the store without migrating: without [watch] it served
    "no mailboxes yet (store down)" and answered DUNNO to every recipient until a scan migrated
    the file; with `[watch] enabled = true` it exited 2, and systemd restarted it into the same
    error.)"""
    site = make_site(tmp_path)
    as_before_the_last_migration(tmp_path / "db" / "q.db")
    s = Serve(site)
    if watch:
        with s.config.open("a") as config:
            config.write("[watch]\nenabled = true\n")
    try:
        s.daemon.start()
    except (AssertionError, RuntimeError) as exc:
        pytest.fail(f"serve did not start: {exc}\n{s.log()[-2000:]}")
    try:
        wait_for(lambda: "serving" in s.log(), what="serve started")
        assert s.ask(request(FULL)) == REJECT, s.log()[-2000:]
    finally:
        s.daemon.stop()
