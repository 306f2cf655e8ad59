"""Scans measure many mailboxes in worker processes, also when started from a thread (daemon, watch)."""

from __future__ import annotations

import threading
from pathlib import Path

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.scan import ScanResult, run_scan
from quotagate.store import open_store

COUNT = 80  # above the threshold under which a scan measures in-process


def scan_spool(tmp_path: Path, in_thread: bool) -> ScanResult:
    spool = tmp_path / "spool"
    for i in range(COUNT):
        cur = spool / "example.org" / f"u{i}" / "Maildir" / "cur"
        cur.mkdir(parents=True)
        (cur / f"1.M{i}.h,S={i + 1}:2,S").write_bytes(b"x" * (i + 1))
    config = parse_config(
        {"store": {"url": f"sqlite:///{tmp_path}/q.db"}, "spool": {"root": str(spool)}, "scan": {"workers": 2}}
    )
    store = open_store(config.store.url)
    store.migrate()
    store.upsert_mailboxes([Mailbox(f"u{i}@example.org", Limits(50)) for i in range(COUNT)])
    results: list[ScanResult] = []
    if in_thread:
        # Another thread is alive while the scan runs, as in the daemon.
        keep_alive = threading.Event()
        other = threading.Thread(target=keep_alive.wait)
        other.start()
        worker = threading.Thread(target=lambda: results.append(run_scan(config, store, full=True)))
        worker.start()
        worker.join(timeout=120)
        keep_alive.set()
        other.join()
    else:
        results.append(run_scan(config, store, full=True))
    store.close()
    return results[0]


def test_pool_results_match_the_files(tmp_path: Path) -> None:
    result = scan_spool(tmp_path, in_thread=False)
    assert result.summary.measured == COUNT
    assert result.summary.bytes == sum(range(1, COUNT + 1))
    assert result.summary.over == COUNT - 49  # sizes 50 to 80 are at or over the 50-byte limit


def test_pool_works_from_a_thread_of_a_threaded_process(tmp_path: Path) -> None:
    result = scan_spool(tmp_path, in_thread=True)
    assert result.summary.bytes == sum(range(1, COUNT + 1))
    assert result.summary.over == COUNT - 49  # sizes 50 to 80 are at or over the 50-byte limit
