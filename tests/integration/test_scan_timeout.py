"""Scans never hang on one mailbox: one that does not answer within [scan] mailbox_timeout is
unknown, and the scan stores and publishes everything else (in-process and with worker processes)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox, State
from quotagate.scan import Job, ScanResult, run_scan
from quotagate.store import open_store
from quotagate.usage.mailbox import Found, measure, unchanged
from tests.spoolgen import add_message, backdate, maildir_folder

HUNG = {"u3", "u41"}


def measure_or_hang(job: Job) -> Found:
    """Measures, except that the mailboxes in HUNG never answer, as on a dead mount."""
    if any(f"/{local}/" in job.root for local in HUNG):
        time.sleep(3600)
    return measure(*job)


def scan_with_hung_mailboxes(tmp_path: Path, count: int, workers: int) -> tuple[ScanResult, float]:
    spool = tmp_path / "spool"
    for i in range(count):
        add_message(maildir_folder(spool / "example.org" / f"u{i}" / "Maildir"), 100)
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path}/q.db"},
            "spool": {"root": str(spool)},
            "scan": {"workers": workers, "mailbox_timeout": 0.5},
            "publish": {"file": str(tmp_path / "overquota")},
        }
    )
    store = open_store(config.store.url)
    store.migrate()
    store.upsert_mailboxes([Mailbox(f"u{i}@example.org", Limits(50)) for i in range(count)])
    try:
        started = time.monotonic()
        result = run_scan(config, store, measure_job=measure_or_hang)
        elapsed = time.monotonic() - started
        stored = store.readings()
    finally:
        store.close()
    assert {a: r.state for a, r in stored.items()} == {a: r.state for a, r in result.readings.items()}
    return result, elapsed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("count", "workers"),
    [(6, 1), (80, 2), (700, 2)],
    ids=["in-process", "worker-processes", "chunks-of-several"],  # a hung job's chunk mates run again
)
def test_a_hung_mailbox_times_out_and_the_rest_is_stored(tmp_path: Path, count: int, workers: int) -> None:
    result, elapsed = scan_with_hung_mailboxes(tmp_path, count, workers)
    hung = {f"{local}@example.org" for local in HUNG if int(local[1:]) < count}
    for address, r in result.readings.items():
        if address in hung:
            assert (r.state, r.reason) == (State.UNKNOWN, "timed out after 0.5 s")
        else:
            assert (r.state, r.bytes) == (State.OVER, 100), address
    assert result.summary.unknown == len(hung)
    published = (tmp_path / "overquota").read_text().splitlines()
    assert len([line for line in published if not line.startswith("#")]) == count - len(hung)
    assert elapsed < 30  # generous: the hung ones would take an hour each
    for child in multiprocessing.active_children():  # hung workers are killed, none left behind
        child.join(timeout=5)
    assert multiprocessing.active_children() == []


def unchanged_or_hang(root: str, *args: Any) -> bool:
    """Looks whether the mailbox changed, except under HUNG: a stat there never returns."""
    if any(f"/{local}/" in root for local in HUNG):
        time.sleep(3600)
    return unchanged(root, *args)


@pytest.mark.slow
def test_an_incremental_scan_does_not_hang_looking_whether_a_mailbox_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unchanged look of an incremental scan touches every mailbox before anything is measured:
    a dead mount there must not hang the scan (and its lock) either."""
    spool = tmp_path / "spool"
    for i in range(6):
        add_message(maildir_folder(spool / "example.org" / f"u{i}" / "Maildir"), 100)
    backdate(spool)
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path}/q.db"},
            "spool": {"root": str(spool)},
            "scan": {"workers": 1, "mailbox_timeout": 0.5},
        }
    )
    with open_store(config.store.url, migrate=True) as store:
        store.upsert_mailboxes([Mailbox(f"u{i}@example.org", Limits(50)) for i in range(6)])
        run_scan(config, store)
        monkeypatch.setattr("quotagate.usage.mailbox.unchanged", unchanged_or_hang)
        started = time.monotonic()
        result = run_scan(config, store, measure_job=measure_or_hang)
        elapsed = time.monotonic() - started
    states = {a: r.state for a, r in result.readings.items()}
    assert states.pop("u3@example.org") is State.OVER  # unknown now: the last known state is kept
    assert result.readings["u3@example.org"].reason == "timed out after 0.5 s"
    assert set(states.values()) == {State.OVER}
    assert elapsed < 30  # generous: the hung look would take an hour
