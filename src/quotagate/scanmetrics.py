"""The last successful scan's metrics as a Prometheus textfile.

A one-shot scan leaves no process behind to be scraped, so it leaves its numbers in a file that
node_exporter's textfile collector serves. Only a successful scan writes it: a refused or failed
one leaves the success timestamp where it was, so an alert on its age fires.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from quotagate.model import ScanSummary


def write_scan_metrics(path: Path, summary: ScanSummary) -> None:
    """Rewrite ``path`` atomically (a temp file beside it, then a rename); raises OSError."""
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
    write_to_textfile(str(path), registry)
