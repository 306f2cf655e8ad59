"""Prometheus metrics of the policy daemon, in a registry of its own (one per daemon, not global)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_le = cast(Callable[[float], str], floatToGoString)  # a bucket's bound as prometheus-client writes it
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
_AGE_BUCKETS = (0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


class Tallied:
    """One labelled count of a :class:`Tally`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Tally:
    """A counter for what every request counts, kept as plain numbers that the registry reads at
    scrape time: prometheus-client's own takes a lock and checks its argument at each ``inc``,
    about a microsecond. Only the event loop's thread may count."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._children: dict[tuple[str, ...], Tallied] = {}
        if not labelnames:
            self.labels()
        registry.register(self)

    def labels(self, *values: str) -> Tallied:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Tallied()
        return child

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class Spread:
    """A histogram for what every request observes, as plain numbers (see :class:`Tally`)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1  # a bucket counts what is <= its bound
        self._sum += amount

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        total, cumulative = self._sum, list(accumulate(self._counts))
        buckets = [(_le(b), n) for b, n in zip(self._bounds, cumulative, strict=False)]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], [*buckets, ("+Inf", cumulative[-1])], total)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Counted or observed by every request: plain numbers (Tally, Spread).
        self.requests = Tally(
            "quotagate_policy_requests", "Policy requests answered, by decision", ["decision"], self.registry
        )
        self.checks = Tally(
            "quotagate_policy_checks",
            "Recipient checks, by stage (rcpt: SIZE= as declared; data: the message's real size) and decision",
            ["stage", "decision"],
            self.registry,
        )
        self.latency = Spread(
            "quotagate_policy_request_seconds", "Time to decide one request", _LATENCY_BUCKETS, self.registry
        )
        self.usage_age = Spread(
            "quotagate_policy_usage_age_seconds", "Age of the usage behind each decision", _AGE_BUCKETS, self.registry
        )
        self.maildirsize_lookups = Tally(
            "quotagate_policy_maildirsize_lookups",
            "maildirsize values looked up, by source: kept (current, from memory) or read (by the reader process)",
            ["source"],
            self.registry,
        )
        self.errors = Counter(
            "quotagate_policy_errors", "Requests answered DUNNO because of an internal error", registry=self.registry
        )
        self.reserved_bytes = Gauge(
            "quotagate_policy_reserved_bytes", "Bytes held for accepted mail in flight", registry=self.registry
        )
        self.reserved_mailboxes = Gauge(
            "quotagate_policy_reserved_mailboxes", "Mailboxes with room held", registry=self.registry
        )
        self.connections = Gauge("quotagate_policy_connections", "Open client connections", registry=self.registry)
        self.snapshot_age = Gauge(
            "quotagate_policy_snapshot_age_seconds",
            "Seconds since limits and usage were loaded from the store",
            registry=self.registry,
        )

        self.stale = Counter(
            "quotagate_policy_stale",
            "Requests answered DUNNO because the usage was older than max_usage_age",
            registry=self.registry,
        )

        self.connections_closed = Counter(
            "quotagate_policy_connections_closed",
            "Connections the daemon closed on a client: over max_connections, a request not done in time, or a"
            " local user not in local_users",
            ["reason"],
            registry=self.registry,
        )
        self.accept_errors = Counter(
            "quotagate_policy_accept_errors",
            "Connections that could not be accepted, by errno (EMFILE: out of file descriptors)",
            ["errno"],
            registry=self.registry,
        )

        self.unreadable = Counter(
            "quotagate_policy_unreadable",
            "Checks whose mailbox's maildirsize could not be read in time or safely: decided on the last"
            " value read from it, else the stored reading",
            registry=self.registry,
        )
        self.claims_below_files = Counter(
            "quotagate_policy_claims_below_files",
            "Checks where a maildirsize claimed less than the files held at the last reading, which"
            " was used instead (the files profile counts the files)",
            registry=self.registry,
        )
        self.inflight_bytes = Gauge(
            "quotagate_policy_inflight_bytes",
            "Bytes held for messages accepted (after DATA) whose delivery was not seen yet",
            registry=self.registry,
        )
        self.releases = Counter(
            "quotagate_policy_reservation_releases",
            "Reservations let go, by cause (no data, delivered, expired, evicted, released, replaced)",
            ["cause"],
            registry=self.registry,
        )
        self.capped = Counter(
            "quotagate_policy_client_capped",
            "Checks deferred because the client already held its share of the mailbox (client_hold)",
            registry=self.registry,
        )
        self.open_descriptors = Gauge(
            "quotagate_policy_open_descriptors",
            "File descriptors the daemon has open (against its RLIMIT_NOFILE)",
            registry=self.registry,
        )
        self.shared_up = Gauge(
            "quotagate_shared_up",
            "1 while the shared state ([shared] url) is used, 0 while the daemon decides alone",
            registry=self.registry,
        )
        self.shared_errors = Counter(
            "quotagate_shared_errors",
            "Calls to the shared state that failed (the daemon then decided alone)",
            registry=self.registry,
        )
        self._counted: dict[str, int] = {}

    def count_releases(self, released: Mapping[str, int], capped: int) -> None:
        """Bring the counters up to the reservations' own running totals."""
        for cause, total in (*released.items(), ("capped", capped)):
            delta = total - self._counted.get(cause, 0)
            if delta > 0:
                (self.capped if cause == "capped" else self.releases.labels(cause)).inc(delta)
            self._counted[cause] = total

    def checked(self, stage: str, decision: str) -> None:
        """One recipient checked."""
        self.checks.labels(stage, decision).inc()

    def observe(self, decision: str, seconds: float, usage_age: float | None) -> None:
        self.requests.labels(decision).inc()
        self.latency.observe(seconds)
        if usage_age is not None:
            self.usage_age.observe(max(usage_age, 0.0))
