"""Usage nobody confirmed for max_usage_age is not a refusal: DUNNO, counted, logged once a minute."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import msgspec
import pytest

from quotagate.model import Action, Reading
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.policy.throttle import Throttled
from quotagate.scan import run_scan
from quotagate.store import open_store
from quotagate.watch.tracker import Tracker
from tests.policy.conftest import DOMAIN, FULL, QUOTA, ROOMY, Site, run, wait_until
from tests.spoolgen import add_message

STALE = "quotagate_policy_stale_total"


class Clock:
    """The service's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def answer(service: PolicyService, recipient: str, size: int | None = None) -> str:
    attributes = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "recipient": recipient}
    if size is not None:
        attributes["size"] = str(size)
    return service.answer(PolicyRequest(attributes))


def loaded(site: Site, service: PolicyService) -> None:
    store = open_store(site.db_url)
    try:
        service.snapshot = load_snapshot(store)
    finally:
        store.close()


def stale_count(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value(STALE) or 0.0


def test_usage_older_than_max_usage_age_gets_dunno_and_an_idle_mailbox_a_scan_confirmed_stays_refused(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="quotagate.policy.service")
    config = site.config(max_usage_age=60)
    metrics = Metrics()
    clock = Clock()
    service = PolicyService(config, metrics, clock)
    loaded(site, service)
    assert answer(service, FULL) == "552 5.2.2 Mailbox is full"

    clock.offset = 61  # a minute without a scan: the store or the scans are gone
    assert [answer(service, FULL), answer(service, FULL, 10), answer(service, ROOMY, QUOTA * 2)] == ["DUNNO"] * 3
    assert stale_count(metrics) == 3
    lines = [r.getMessage() for r in caplog.records if "max_usage_age" in r.getMessage()]
    assert len(lines) == 1, lines  # once a minute, not once a request
    assert FULL in lines[0] and "1 times since the last such line" in lines[0]

    # A scan that finds the mailbox unchanged writes no row, but confirms it: refused again.
    store = open_store(site.db_url)
    try:
        summary = run_scan(config, store).summary
        assert summary.written == 0, summary
    finally:
        store.close()
    loaded(site, service)
    clock.offset = 1
    assert service.snapshot.readings[FULL].measured_at < service.snapshot.confirmed_at
    assert answer(service, FULL) == "552 5.2.2 Mailbox is full"
    assert stale_count(metrics) == 3


def test_with_live_tracking_usage_is_as_fresh_as_the_trackers_last_cycle(site: Site) -> None:
    config = site.config(max_usage_age=60)
    metrics = Metrics()
    service = PolicyService(config, metrics)
    loaded(site, service)
    confirmed = [time.time()]
    old = time.time() - 3600
    # The rows are an hour old, the last scan too; the tracker went round a moment ago.
    service.snapshot = replace(
        service.snapshot,
        readings={a: msgspec.structs.replace(r, measured_at=old) for a, r in service.snapshot.readings.items()},
        confirmed_at=old,
        source="watch",
        confirmed=lambda: confirmed[0],
    )
    assert service.check(FULL, None).decision.action is Action.REJECT
    confirmed[0] = time.time() - 61  # the tracker stopped a minute ago
    outcome = service.check(FULL, None)
    assert outcome.decision.action is Action.DUNNO
    assert outcome.decision.reason == "usage is older than max_usage_age"
    assert stale_count(metrics) == 1


def test_throttled_logs_the_first_then_once_per_period_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    now = [0.0]
    throttled = Throttled(logging.getLogger("test.throttle"), period=60, clock=lambda: now[0])
    written = [throttled.warning("cap hit by %s", "a")]
    now[0] = 30
    written += [throttled.warning("cap hit by %s", "b") for _ in range(5)]
    now[0] = 60
    written.append(throttled.warning("cap hit by %s", "c"))
    assert written == [True, False, False, False, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "cap hit by a (1 times since the last such line)",
        "cap hit by c (6 times since the last such line)",
    ]


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_the_tracker_confirms_every_reading_each_cycle_and_stops_when_it_dies(site: Site, mode: str) -> None:
    config = site.config()
    config = msgspec.structs.replace(
        config, watch=msgspec.structs.replace(config.watch, flush_seconds=0.02, poll_seconds=0.05)
    )
    failing = [False]

    async def publish(changed: list[Reading], removed: list[str]) -> None:
        if failing[0]:  # a bug: the tracker dies (a store error would only be held and retried)
            raise RuntimeError("the tracker died")

    async def main() -> tuple[float, float, float, float]:
        store = open_store(site.db_url)
        try:
            tracker = Tracker(config, publish, mode=mode)
            tracker.load(store.mailboxes(), store.readings())
        finally:
            store.close()
        task = asyncio.create_task(tracker.run())
        assert await wait_until(lambda: tracker.confirmed_at > 0)
        first = tracker.confirmed_at
        assert await wait_until(lambda: tracker.confirmed_at > first + 0.1)
        second = tracker.confirmed_at
        failing[0] = True
        add_message(site.spool / DOMAIN / "full" / "Maildir", 100)  # the next flush publishes, and fails
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(task, 5)
        dead = tracker.confirmed_at
        await asyncio.sleep(0.2)
        return first, second, dead, tracker.confirmed_at

    before = time.time()
    first, second, dead, later = run(main())
    assert before <= first < second <= dead <= time.time()
    assert later == dead
