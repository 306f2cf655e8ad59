"""Writing usage history from scans and the watch (the pure rules are in :mod:`quotagate.history`).

History is for forecasts and charts, never for the over-quota set: a store that takes the
readings but not the samples costs a log line, not a scan or a watch batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from quotagate.config import Config
from quotagate.history import Recorder, Sample
from quotagate.model import Reading, State
from quotagate.store import Store
from quotagate.store.base import store_errors

log = logging.getLogger(__name__)


def samples_of(readings: Iterable[Reading]) -> list[Sample]:
    """A sample per known reading (an unknown mailbox has no usage to chart)."""
    return [Sample(r.address, r.measured_at, r.bytes, r.messages) for r in readings if r.state is not State.UNKNOWN]


def _write(store: Store, samples: Sequence[Sample]) -> None:
    try:
        store.record_history(samples)
    except store_errors() as exc:
        log.error("usage history not recorded (%d samples): %s", len(samples), exc)


def after_scan(config: Config, store: Store, changed: Sequence[Reading], now: float) -> None:
    """Record what a scan changed, then prune: scans run often enough for pruning to stay small.
    A scan that changed nothing adds no sample, and leaves pruning to the next one that does:
    nothing grew meanwhile, and the unchanged scan cron runs most stays one write shorter."""
    samples = samples_of(changed)
    if not config.history.enabled or not samples:
        return
    _write(store, samples)
    try:
        store.prune_history(now, config.history.retention)
    except store_errors() as exc:
        log.error("usage history not pruned: %s", exc)


class WatchHistory:
    """What a watch batch records: see :class:`quotagate.history.Recorder`."""

    def __init__(self, config: Config) -> None:
        self.recorder = Recorder(config.history.interval) if config.history.enabled else None

    def after_batch(self, store: Store, changed: Sequence[Reading]) -> None:
        if self.recorder is not None and (samples := self.recorder.offer(samples_of(changed))):
            _write(store, samples)
