"""The metrics of ``serve --workers N`` as one daemon's: the workers' registries added up.

Each worker writes its own registry to a file in Prometheus's text format every few seconds
(nothing on the request path: prometheus-client's multiprocess mode would add a locked write to
a memory map to every counter and histogram touched per request); the supervisor reads the files
at each scrape and serves their sum. Counters and histograms add up; gauges too (connections,
held bytes), except the age of the snapshot (the oldest worker's) and ``quotagate_shared_up``
(0 while any worker decides alone). A worker that dies leaves its counters to the total, so
restarts never make a counter go backwards.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def _oldest(a: float, b: float) -> float:
    """The larger age, NaN (a worker without a snapshot: older than any) winning whichever
    worker's file is read first (the builtin ``max`` answers by the order of its arguments)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


# Gauges that do not add up across workers.
_GAUGES: dict[str, Callable[[float, float], float]] = {
    "quotagate_policy_snapshot_age_seconds": _oldest,
    "quotagate_shared_up": min,
}
_CUMULATIVE = frozenset({"counter", "histogram", "summary"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Family:
    name: str
    documentation: str
    type: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """One worker's file; what cannot be parsed (a file cut short) counts as nothing."""
    families: dict[str, Family] = {}
    try:
        for metric in text_string_to_metric_families(text):
            family = families.setdefault(metric.name, Family(metric.name, metric.documentation, metric.type))
            for sample in metric.samples:
                family.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except ValueError:
        return {}
    return families


def _combine(family: Family, key: SampleKey, value: float) -> None:
    old = family.samples.get(key)
    if old is None:
        family.samples[key] = value
    elif key[0].endswith("_created"):
        family.samples[key] = min(old, value)
    else:
        family.samples[key] = _GAUGES.get(family.name, _sum)(old, value)


def _sum(a: float, b: float) -> float:
    return a + b


def add_up(workers: Iterable[dict[str, Family]]) -> dict[str, Family]:
    total: dict[str, Family] = {}
    for families in workers:
        for name, family in families.items():
            into = total.setdefault(name, Family(name, family.documentation, family.type))
            for key, value in family.samples.items():
                _combine(into, key, value)
    return total


def cumulative(families: dict[str, Family]) -> dict[str, Family]:
    """What a worker that is gone still contributes: its counters and histograms."""
    return {name: family for name, family in families.items() if family.type in _CUMULATIVE}


class FleetCollector:
    """A prometheus-client collector serving the sum of the workers' files in ``folder``
    (``worker-N.prom``) and of the workers that are gone."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._retired: dict[str, Family] = {}
        self._lock = threading.Lock()  # scrapes run in the HTTP server's thread

    def path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.prom"

    def retire(self, index: int) -> None:
        """Worker ``index`` is gone: keep what it counted, forget the file it left."""
        path = self.path(index)
        try:
            families = parse(path.read_text(encoding="utf-8"))
            path.unlink()
        except OSError:
            return
        with self._lock:
            self._retired = add_up([self._retired, cumulative(families)])

    def collect(self) -> Iterator[Metric]:
        workers = []
        for path in sorted(self.folder.glob("worker-*.prom")):
            try:
                workers.append(parse(path.read_text(encoding="utf-8")))
            except OSError:
                continue
        with self._lock:
            total = add_up([self._retired, *workers])
        for family in total.values():
            metric = Metric(family.name, family.documentation, family.type)
            for (name, labels), value in family.samples.items():
                metric.add_sample(name, dict(labels), value)
            yield metric
