"""Metrics of the one-shot commands (``scan``, ``warn``) as Prometheus textfiles.

A one-shot command leaves no process behind to be scraped, so it leaves its numbers in a file that
node_exporter's textfile collector serves. Only a successful run writes it: a refused or failed
one leaves the success timestamp where it was, so an alert on its age fires.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from quotagate.model import ScanSummary
from quotagate.textfile import write_textfile
from quotagate.warn import Outlook


def write_scan_metrics(path: Path, summary: ScanSummary) -> None:
    """Rewrite ``path`` atomically (:func:`quotagate.textfile.write_textfile`); raises OSError."""
    registry = CollectorRegistry()
    Gauge(
        "quotagate_last_scan_success_timestamp_seconds",
        "When the last successful scan finished, in seconds since the epoch.",
        registry=registry,
    ).set(summary.finished_at)
    Gauge(
        "quotagate_last_scan_duration_seconds",
        "How long the last successful scan took, in seconds.",
        registry=registry,
    ).set(summary.seconds)
    write_textfile(path, registry)


def write_outlook_metrics(path: Path, outlook: Outlook, finished_at: float) -> None:
    """Rewrite ``path`` with what a ``warn`` run saw: mailboxes past each threshold, filling soon."""
    registry = CollectorRegistry()
    Gauge(
        "quotagate_last_warn_success_timestamp_seconds",
        "When the last successful warn run finished, in seconds since the epoch.",
        registry=registry,
    ).set(finished_at)
    Gauge(
        "quotagate_mailboxes_measured",
        "Mailboxes with a limit and a known usage at the last warn run.",
        registry=registry,
    ).set(outlook.measured)
    above = Gauge(
        "quotagate_mailboxes_above",
        "Mailboxes whose usage (bytes or messages, the fuller) is at or past the threshold.",
        ["threshold"],
        registry=registry,
    )
    for threshold, count in outlook.above.items():
        above.labels(threshold).set(count)
    filling = Gauge(
        "quotagate_mailboxes_forecast_full",
        "Mailboxes full already or forecast full within the given number of days.",
        ["within_days"],
        registry=registry,
    )
    for days, count in outlook.full_within.items():
        filling.labels(str(days)).set(count)
    write_textfile(path, registry)
