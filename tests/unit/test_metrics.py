"""The plain-number counters and histograms the request path uses expose what prometheus-client's
own would: the same samples, the same bucket bounds (a value on a bound counts in its bucket)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from quotagate.policy.metrics import Spread, Tally

BOUNDS = (0.00005, 0.001, 0.5, 1.0, 86400.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(st.lists(st.one_of(st.sampled_from(BOUNDS), st.floats(0, 1e6)), max_size=40))
def test_a_spread_shows_what_a_histogram_shows(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    spread = Spread("seconds", "Time", BOUNDS, ours)
    histogram = Histogram("seconds", "Time", buckets=BOUNDS, registry=theirs)
    for value in values:
        spread.observe(value)
        histogram.observe(value)
    assert samples(ours) == samples(theirs)


@given(st.lists(st.sampled_from(["reject", "accept", "dunno"]), max_size=20))
def test_a_tally_shows_what_a_counter_shows(decisions: list[str]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally, counter = (
        Tally("requests", "Requests", ["decision"], ours),
        Counter("requests", "Requests", ["decision"], registry=theirs),
    )
    plain, plain_counter = Tally("errors", "Errors", [], ours), Counter("errors", "Errors", registry=theirs)
    for decision in decisions:
        tally.labels(decision).inc()
        counter.labels(decision).inc()
        plain.labels().inc(2)
        plain_counter.inc(2)
    assert samples(ours) == samples(theirs)
