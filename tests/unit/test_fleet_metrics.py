"""The metrics of ``serve --workers``: the workers' registries added up, gone workers' counts kept."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quotagate.policy.fleetmetrics import FleetCollector, add_up, parse


def worker_text(requests: int, connections: int, age: float, up: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("quotagate_policy_requests", "Requests", ["decision"], registry=registry).labels("accept").inc(requests)
    Gauge("quotagate_policy_connections", "Open", registry=registry).set(connections)
    Gauge("quotagate_policy_snapshot_age_seconds", "Age", registry=registry).set(age)
    Gauge("quotagate_shared_up", "Up", registry=registry).set(up)
    latency = Histogram("quotagate_policy_request_seconds", "Time", buckets=(0.001, 0.01), registry=registry)
    for seconds in latencies:
        latency.observe(seconds)
    return generate_latest(registry).decode()


def served(registry: CollectorRegistry) -> dict[str, float]:
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_counters_histograms_and_most_gauges_add_up() -> None:
    total = add_up([parse(worker_text(3, 2, 10.0, 1, [0.0005, 0.005])), parse(worker_text(4, 5, 30.0, 0, [0.0005]))])
    requests = total["quotagate_policy_requests"].samples
    assert requests[("quotagate_policy_requests_total", (("decision", "accept"),))] == 7
    assert total["quotagate_policy_connections"].samples[("quotagate_policy_connections", ())] == 7
    # The oldest snapshot is the one to worry about; any worker deciding alone means not up.
    assert total["quotagate_policy_snapshot_age_seconds"].samples[("quotagate_policy_snapshot_age_seconds", ())] == 30
    assert total["quotagate_shared_up"].samples[("quotagate_shared_up", ())] == 0
    buckets = total["quotagate_policy_request_seconds"].samples
    assert buckets[("quotagate_policy_request_seconds_bucket", (("le", "0.001"),))] == 2
    assert buckets[("quotagate_policy_request_seconds_count", ())] == 3


def test_a_file_cut_short_counts_as_nothing() -> None:
    assert parse("quotagate_policy_requests_total{decision=") == {}


def test_a_gone_workers_counts_stay_and_its_gauges_go(tmp_path: Path) -> None:
    fleet = FleetCollector(tmp_path)
    fleet.path(0).write_text(worker_text(3, 2, 10.0, 1, [0.0005]))
    fleet.path(1).write_text(worker_text(4, 5, 30.0, 1, [0.0005]))
    registry = CollectorRegistry()
    registry.register(fleet)
    assert served(registry)['quotagate_policy_requests_total{decision="accept"}'] == 7

    fleet.retire(1)
    assert not fleet.path(1).exists()
    fleet.path(1).write_text(worker_text(1, 1, 1.0, 1, []))  # its successor, starting from zero
    samples = served(registry)
    assert samples['quotagate_policy_requests_total{decision="accept"}'] == 8
    assert samples["quotagate_policy_connections"] == 3
    assert samples["quotagate_policy_request_seconds_count"] == 2


AGE = "quotagate_policy_snapshot_age_seconds"


def age_text(age: float) -> str:
    registry = CollectorRegistry()
    Gauge(AGE, "Seconds since limits and usage were loaded from the store", registry=registry).set(age)
    return generate_latest(registry).decode()


def served_age(fleet: FleetCollector) -> float:
    registry = CollectorRegistry()
    registry.register(fleet)
    value = registry.get_sample_value(AGE)
    assert value is not None
    return value


@pytest.mark.parametrize("without", [0, 1], ids=["first worker without", "second worker without"])
def test_a_worker_without_a_snapshot_shows_in_the_fleets_snapshot_age(tmp_path: Path, without: int) -> None:
    fleet = FleetCollector(tmp_path)
    for index in (0, 1):
        fleet.path(index).write_text(age_text(math.nan if index == without else 5.0))
    age = served_age(fleet)
    # No snapshot is older than any: NaN (or +Inf), never the other worker's 5 seconds.
    assert math.isnan(age) or age == math.inf, age
