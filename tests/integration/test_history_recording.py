"""Scans and the watch record usage history in the store; scans prune it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from quotagate.config import Config, parse_config
from quotagate.history import DAY, Sample
from quotagate.model import Limits, Mailbox
from quotagate.scan import run_scan
from quotagate.store import Store, open_store
from quotagate.watch.runner import StorePublisher
from tests.policy.conftest import run
from tests.spoolgen import add_message, maildir_folder


def _setup(tmp_path: Path, **history: object) -> tuple[Config, Store, Path]:
    spool = tmp_path / "spool"
    folder = maildir_folder(spool / "example.org" / "a" / "Maildir")
    add_message(folder, 100)
    maildir_folder(spool / "example.org" / "b" / "Maildir")
    config = parse_config({"spool": {"root": str(spool)}, "history": history})
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    store.migrate()
    store.upsert_mailboxes([Mailbox("a@example.org", Limits(1000)), Mailbox("b@example.org", Limits(1000))])
    return config, store, spool / "example.org" / "a" / "Maildir"


def test_a_scan_records_what_changed(tmp_path: Path) -> None:
    config, store, maildir = _setup(tmp_path)
    try:
        first = run_scan(config, store)
        at = first.summary.started_at
        assert store.history(0) == {
            "a@example.org": [Sample("a@example.org", at, 100, 1)],
            "b@example.org": [Sample("b@example.org", at, 0, 0)],
        }
        run_scan(config, store, full=True)  # nothing changed: nothing recorded
        assert sum(map(len, store.history(0).values())) == 2
        add_message(maildir_folder(maildir), 50)
        second = run_scan(config, store, full=True)
        assert store.history(0)["a@example.org"][-1] == Sample("a@example.org", second.summary.started_at, 150, 2)
        assert len(store.history(0)["b@example.org"]) == 1
    finally:
        store.close()


def test_a_scan_prunes_expired_history(tmp_path: Path) -> None:
    config, store, _ = _setup(tmp_path, daily_days=10, hourly_days=5)
    try:
        store.record_history([Sample("a@example.org", 1.0, 1, 1)])
        run_scan(config, store)
        assert [s.at for s in store.history(0)["a@example.org"]] != [1.0]
        assert all(s.at > 10 * DAY for s in store.history(0)["a@example.org"])
    finally:
        store.close()


def test_history_off_records_nothing(tmp_path: Path) -> None:
    config, store, _ = _setup(tmp_path, enabled=False)
    try:
        run_scan(config, store)
        assert store.history(0) == {}
    finally:
        store.close()


def test_the_watch_records_a_changing_mailbox_at_most_once_per_interval(tmp_path: Path) -> None:
    """The 2nd and 3rd changes come within the interval: only the newest is written, with the
    first batch after the interval (here one for another mailbox)."""
    config, store, _ = _setup(tmp_path, interval=300)
    try:
        run_scan(config, store)
        publisher = StorePublisher(config, store)
        base = {a: r for a, r in store.readings().items()}
        start = base["a@example.org"].measured_at

        def flush(address: str, t: float, size: int) -> None:
            run(publisher([msgspec.structs.replace(base[address], bytes=size, measured_at=start + t)], []))

        for i, size in enumerate((200, 300, 400)):
            flush("a@example.org", 1000 + i, size)
        flush("b@example.org", 1300, 7)
        samples = {a: [(s.at - start, s.bytes) for s in h] for a, h in store.history(start + 1).items()}
        assert samples == {"a@example.org": [(1000, 200), (1002, 400)], "b@example.org": [(1300, 7)]}
    finally:
        store.close()
