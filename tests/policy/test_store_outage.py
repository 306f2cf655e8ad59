"""A real PostgreSQL stopped under a running ``quotagate serve``: stale usage is not a refusal,
and the daemon finds the store again by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.policy.conftest import (
    DOMAIN,
    DUNNO,
    FULL,
    REJECT,
    ROOMY,
    Serve,
    Site,
    free_port,
    make_site,
    request,
    scrape,
    too_big,
    wait_for,
)
from tests.servers.postgres import private_postgres_process
from tests.spoolgen import add_message

MAX_AGE = 6


def scan(site: Site) -> float:
    """A scan of the site into its store; returns a time no later than the scan's start."""
    before = time.time()
    store = open_store(site.db_url)
    try:
        # Full: an incremental scan skips a mailbox whose folders it trusts unchanged, which
        # depends on how long ago they were written (racy_seconds): the count below would too.
        summary = run_scan(site.config(), store, full=True).summary
    finally:
        store.close()
    assert summary.measured == 2, summary
    return before


@pytest.mark.slow
def test_a_store_stopped_while_serving_gives_dunno_after_max_usage_age_and_552_again_once_it_is_back(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    # A private server: stopping the session's shared one would break other tests.
    with private_postgres_process() as (postgres, server):
        site = make_site(tmp_path, postgres.create_database("outage"))
        metrics = free_port()
        s = serve(
            site, max_usage_age=MAX_AGE, refresh_seconds=0.3, reservation_seconds=0, metrics=f"127.0.0.1:{metrics}"
        )
        pid = s.pid
        assert s.ask(request(ROOMY, 5000)) == DUNNO
        add_message(site.spool / DOMAIN / "roomy" / "Maildir", 5000)
        scanned = scan(site)
        # The daemon has loaded this scan once roomy's new message counts; full is unchanged (its
        # row is not rewritten), and as fresh as this scan.
        wait_for(lambda: s.ask(request(ROOMY, 5000)) == too_big(5000), what="the scan loaded")
        assert s.ask(request(FULL)) == REJECT

        server.stop()
        wait_for(lambda: "cannot refresh from the store" in s.log(), what="the refresh failing")
        answers: list[tuple[float, bytes]] = []

        def dunno() -> bool:
            answers.append((time.time(), s.ask(request(FULL))))
            time.sleep(0.1)
            return answers[-1][1] == DUNNO

        wait_for(dunno, timeout=MAX_AGE + 20, what="DUNNO once the usage is stale")
        refused = [t for t, a in answers if a == REJECT]
        assert refused, "the usage was still fresh right after the store stopped: 552 expected"
        first_dunno = answers[-1][0]
        assert first_dunno >= scanned + MAX_AGE, "DUNNO before the usage was max_usage_age old"
        assert {a for _, a in answers} == {REJECT, DUNNO}
        assert s.ask(request(ROOMY, 10**9)) == DUNNO  # even a size that could never fit: nothing known
        assert scrape(metrics)["quotagate_policy_stale_total"] >= 2
        assert "more than max_usage_age" in s.log()

        server.start()
        scan(site)
        wait_for(lambda: s.ask(request(FULL)) == REJECT, timeout=20, what="a refusal with the store back")
        assert s.alive() and s.pid == pid, "the daemon was restarted"
        assert s.ask(request(ROOMY, 10**9)) == too_big(10**9)
        assert s.daemon.stop() == 0
