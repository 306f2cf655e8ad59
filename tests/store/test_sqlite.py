"""The standard library's SQLite store beside SQLAlchemy's: the same file, the same tables.

The contract suite (test_contract.py) runs on both; here, that each reads what the other wrote,
that SQLAlchemy alone creates and migrates the tables, and which URLs go to which.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quotagate.history import Sample
from quotagate.model import (
    FolderUsage,
    Format,
    Limits,
    Mailbox,
    MailboxUsage,
    MaildirsizeInfo,
    Reading,
    ScanSummary,
    State,
)
from quotagate.store import Store, StoreError, open_store, schema, store_for
from quotagate.store.sql import SqlStore
from quotagate.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.store.backends import as_in_version_1, store_config


def test_its_statements_were_written_for_the_latest_schema() -> None:
    """A new migration must reach the sqlite3 store's statements too: this fails until it does."""
    assert SCHEMA_VERSION == schema.LATEST


def _tables(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").fetchall()
    conn.close()
    return found


def test_sqlalchemy_creates_the_tables_it_would_create_for_itself(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/fast.db") as fast:
        assert isinstance(fast, SqliteStore)
        with pytest.raises(StoreError, match="quotagate db migrate"):
            fast.mailboxes()
        assert fast.migrate() == [f"{m.version}: {m.description}" for m in schema.MIGRATIONS]
        assert fast.migrate() == []
        assert fast.mailboxes() == []
    with SqlStore(f"sqlite:///{tmp_path}/sqlalchemy.db") as sql:
        sql.migrate()
    assert _tables(tmp_path / "fast.db") == _tables(tmp_path / "sqlalchemy.db")


def test_a_version_1_file_is_refused_until_sqlalchemy_upgrades_it(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with SqlStore(f"sqlite:///{db}") as sql, sql.engine.begin() as conn:
        for table in schema.MIGRATIONS[0].tables:
            as_in_version_1(table).create(conn)
        conn.execute(schema.schema_version.insert().values(version=1, description="v1", applied_at=0.0))
        mailbox = as_in_version_1(schema.mailbox)
        conn.execute(mailbox.insert().values(address="a@example.org", quota_bytes=5, quota_messages=0))
    with open_store(f"sqlite:///{db}") as fast:
        with pytest.raises(StoreError, match="quotagate db migrate"):
            fast.mailboxes()
        assert "CREATE TABLE quotagate_history" in "\n".join(fast.migration_sql())
        assert fast.migrate() == [
            "2: usage history and the warnings ledger",
            "3: change stamps, so the daemon refreshes only what changed",
            "4: what delivery agents weigh before they believe a maildirsize",
            "5: room for a mailbox's thousands of folders on MySQL and MariaDB",
        ]
        assert fast.mailboxes() == [Mailbox("a@example.org", Limits(5))]


def test_a_file_from_a_newer_quotagate_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with open_store(f"sqlite:///{db}", migrate=True):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO quotagate_schema_version VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    with open_store(f"sqlite:///{db}") as fast, pytest.raises(StoreError, match="upgrade quotagate"):
        fast.readings()


def _written(store: Store) -> None:
    """One of everything a store keeps, with the awkward values: NULLs, a huge stamp, unicode."""
    store.upsert_mailboxes([Mailbox("a@example.org", Limits(10, 2), True, "x/ä"), Mailbox("b@example.org", Limits())])
    store.upsert_mailboxes([Mailbox("b@example.org", Limits(0, 7), False)])
    folders = (FolderUsage("INBOX", 5, 1, (1_700_000_000_123_456_789, 2)), FolderUsage("Trash ☃", 0, 0, None))
    usage = MailboxUsage(Format.MAILDIR, folders, 1_700_000_000_987_654_321, None, MaildirsizeInfo(5, 1, "10S"))
    unknown = MailboxUsage(Format.MISSING, error="timed out after 300 s")
    store.save_readings(
        [
            Reading("a@example.org", "/m/a", usage, 5, 1, State.OVER, 1_700_000_000.5),
            Reading("b@example.org", "/m/b", unknown, 0, 0, State.UNKNOWN, 1_700_000_001.0),
        ],
        [],
        {"a@example.org": True},
    )
    store.record_scan(ScanSummary(1.0, 2.5, True, 2, 2, 1, 5, 1, 1, 2))
    store.record_history([Sample("a@example.org", 1_700_000_000.5, 5, 1)])
    assert store.claim_warning("a@example.org", "80%", 3.0)


def _kept(store: Store) -> tuple[object, ...]:
    return (
        store.mailboxes(),
        store.readings(),
        store.last_scan(),
        store.history(0),
        store.sent_warnings(),
    )


@pytest.mark.parametrize("writer", ["sqlite", "sqlite+pysqlite"], ids=["sqlite3-writes", "sqlalchemy-writes"])
def test_what_one_writes_the_other_reads(tmp_path: Path, writer: str) -> None:
    db = tmp_path / "q.db"
    reader = "sqlite+pysqlite" if writer == "sqlite" else "sqlite"
    with open_store(f"{writer}:///{db}", migrate=True) as store:
        _written(store)
        wrote = _kept(store)
    with open_store(f"{reader}:///{db}") as store:
        assert _kept(store) == wrote
        assert not store.claim_warning("a@example.org", "80%", 4.0)
    with sqlite3.connect(db) as conn:  # what Exim's lookup reads
        flags = dict(conn.execute("SELECT address, over_quota FROM quotagate_usage").fetchall())
    conn.close()
    assert flags == {"a@example.org": 1, "b@example.org": 0}


@pytest.mark.parametrize(
    "url, schema_",
    [
        ("sqlite+pysqlite:///{d}/q.db", "quotagate"),
        ("sqlite:///{d}/q.db?timeout=3", "quotagate"),
        ("sqlite:///{d}/q%20.db", "quotagate"),
        ("sqlite:///:memory:", "quotagate"),
        ("sqlite:///{d}/q.db", "classic"),
    ],
)
def test_urls_only_sqlalchemy_understands_go_to_it(tmp_path: Path, url: str, schema_: str) -> None:
    config = store_config({"url": url.format(d=tmp_path), "schema": schema_})
    with store_for(config) as store:
        assert isinstance(store, SqlStore)


def test_a_relative_path_is_taken_as_sqlalchemy_takes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/q.db", migrate=True) as store:
        assert isinstance(store, SqliteStore)
        store.upsert_mailboxes([Mailbox("a@example.org")])
    with open_store("sqlite+pysqlite:///rel/q.db") as store:
        assert [m.address for m in store.mailboxes()] == ["a@example.org"]


def test_threads_take_turns_on_the_one_connection(tmp_path: Path) -> None:
    """serve and watch use a store from several threads at once."""

    def reading(address: str, bytes_: int) -> Reading:
        return Reading(address, "/m", MailboxUsage(Format.MAILDIR), bytes_, 0, State.OK, 1.0)

    with open_store(f"sqlite:///{tmp_path}/q.db", migrate=True) as store:

        def work(n: int) -> None:
            for i in range(30):
                store.save_readings([reading(f"u{n}@example.org", i)], [])
                store.readings()
                store.record_scan(ScanSummary(1.0, 2.0, False, n, i, 0, 0, 0, 0, 0))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))
        assert {a: r.bytes for a, r in store.readings().items()} == {f"u{n}@example.org": 29 for n in range(4)}


def test_only_the_latest_scan_summaries_are_kept(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    with open_store(f"sqlite:///{db}", migrate=True) as store:
        assert isinstance(store, SqliteStore)
        store.scans_kept = 3
        for n in range(1, 7):
            store.record_scan(ScanSummary(float(n), n + 0.5, False, n, n, 0, 0, 0, 0, 0))
        last = store.last_scan()
        assert last is not None and last.mailboxes == 6
    with sqlite3.connect(db) as conn:
        kept = [row[0] for row in conn.execute("SELECT mailboxes FROM quotagate_scan ORDER BY id")]
    conn.close()
    assert kept == [4, 5, 6]
