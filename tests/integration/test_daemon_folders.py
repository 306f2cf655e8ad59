"""The daemon keeps of each mailbox's folders only those a ``[[folders]]`` limit applies to: every
folder of a million mailboxes, with its stamps, took 1.5 GB; ``local+folder`` checks still see the
limited folder's own usage, and the rules' change at a reload is followed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quotagate.config import parse_config
from quotagate.model import FolderUsage, Limits, Mailbox
from quotagate.policy.daemon import Daemon
from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.spoolgen import add_message, maildir_folder


def test_a_refresh_keeps_the_limited_folders_totals_only(tmp_path: Path) -> None:
    root = tmp_path / "spool" / "example.org" / "a" / "Maildir"
    for folder, size in (("INBOX", 500), ("Junk", 70), ("Sent", 30)):
        add_message(maildir_folder(root, folder), size)
    table: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp_path}/q.db"},
        "spool": {"root": str(tmp_path / "spool")},
        "scan": {"racy_seconds": 0},
        "folders": [{"match": "Junk", "quota": "1K"}, {"match": "Sent", "exclude": True}],
    }
    config = parse_config(table)
    with open_store(config.store.url, migrate=True) as store:
        store.upsert_mailboxes([Mailbox("a@example.org", Limits(10**6))])
        run_scan(config, store)
    daemon = Daemon(lambda: config)
    reading = daemon._load().readings["a@example.org"]
    assert reading.usage.folders == (FolderUsage("Junk", 70, 1),)
    assert (reading.bytes, reading.messages) == (570, 2)  # Sent is excluded from the total, not lost from it

    daemon.config = parse_config({**table, "folders": [{"match": "Sent", "quota": "1K"}]})  # a reload's rules
    assert daemon._load().readings["a@example.org"].usage.folders == (FolderUsage("Sent", 30, 1),)
