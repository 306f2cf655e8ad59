"""SQL specifics (migrations, admin schemas) against every real SQL server."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, inspect, select

from quotagate.model import (
    AliasDomains,
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
from quotagate.store import StoreError, open_store, schema
from quotagate.store.presets import PRESETS
from quotagate.store.sql import SqlStore
from tests.servers import schemas
from tests.store.backends import as_in_version_1

HOSTILE = ["o'brien@example.org", 'quo"te@example.org', "back\\slash@example.org", "ünï@exämple.org"]


def reading(address: str, bytes_: int, state: State = State.OK, folders: int = 2) -> Reading:
    usage = MailboxUsage(
        Format.MAILDIR,
        tuple(
            sorted(
                (
                    FolderUsage(f"F{i}" if i else "INBOX", bytes_ // folders, i, (10**18 + i, -1) if i else None)
                    for i in range(folders)
                ),
                key=lambda f: f.name,
            )
        ),
        root_stamp=1_700_000_000_123_456_789,
        maildirsize=MaildirsizeInfo(bytes_, 3, "1000S,10C"),
    )
    return Reading(address, f"/m/{address}", usage, bytes_, 3, state, 1_700_000_000.5)


def test_migrate_is_idempotent_and_printable(db_url: str) -> None:
    store = open_store(db_url)
    try:
        assert any("CREATE TABLE quotagate_usage" in s for s in store.migration_sql())
        assert store.migrate()
        assert store.migrate() == []
        assert store.migration_sql() == []
    finally:
        store.close()


def test_an_unmigrated_store_says_what_to_do(db_url: str) -> None:
    store = open_store(db_url)
    try:
        with pytest.raises(StoreError, match="quotagate db migrate"):
            store.mailboxes()
    finally:
        store.close()


def test_mailboxes_round_trip(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.migrate()
        boxes = [Mailbox(a, Limits(i * 1000, i), i % 2 == 0, None if i else "x/Maildir") for i, a in enumerate(HOSTILE)]
        store.upsert_mailboxes(boxes)
        store.upsert_mailboxes([Mailbox(HOSTILE[0], Limits(5, 6))])  # an update, not a second row
        got = {m.address: m for m in store.mailboxes()}
        assert len(got) == len(HOSTILE)
        assert got[HOSTILE[0]] == Mailbox(HOSTILE[0], Limits(5, 6))
        assert got[HOSTILE[3]] == boxes[3]
        assert store.mailbox(HOSTILE[2]) == boxes[2]
        assert store.mailbox("x' OR '1'='1@example.org") is None
    finally:
        store.close()


def test_readings_round_trip_and_removal(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.migrate()
        a, b = reading(HOSTILE[0], 4000, State.OVER), reading(HOSTILE[1], 10, folders=1)
        unknown = Reading(
            HOSTILE[2], "/m", MailboxUsage(Format.MISSING, error="Permission denied"), 0, 0, State.UNKNOWN, 1.0
        )
        store.save_readings([a, b, unknown], [])
        got = store.readings()
        assert got == {a.address: a, b.address: b, unknown.address: unknown}
        assert store.reading(a.address) == a
        store.save_readings([reading(HOSTILE[1], 20)], [HOSTILE[0]])
        got = store.readings()
        assert set(got) == {HOSTILE[1], HOSTILE[2]}
        assert got[HOSTILE[1]].bytes == 20
    finally:
        store.close()


def test_scan_summaries(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.migrate()
        assert store.last_scan() is None
        for n in (1, 2):
            store.record_scan(ScanSummary(float(n), n + 0.5, n == 1, 10 * n, n, 100, 10**12, 1, 0, n))
        last = store.last_scan()
        assert last is not None and last.mailboxes == 20 and not last.full
    finally:
        store.close()


def test_scan_history_keeps_only_the_latest_summaries(db_url: str) -> None:
    """A scan every minute for years must not grow the table without end."""
    with open_store(db_url) as store:
        store.migrate()
        assert isinstance(store, SqlStore)
        store.scans_kept = 3
        for n in range(1, 7):
            store.record_scan(ScanSummary(float(n), n + 0.5, False, n, n, 0, 0, 0, 0, 0))
        with store.engine.connect() as conn:
            kept = [row[0] for row in conn.execute(select(schema.scan.c.mailboxes).order_by(schema.scan.c.id))]
        assert kept == [4, 5, 6]
        last = store.last_scan()
        assert last is not None and last.mailboxes == 6


@pytest.mark.parametrize("preset", ["postfixadmin", "classic"])
def test_admin_schema_is_read_and_flagged_without_rewriting_it(db_url: str, preset: str) -> None:
    schemas.create(db_url, preset)
    schemas.add_mailbox(db_url, preset, "alice@example.org", 1000, "example.org/alice/")
    schemas.add_mailbox(db_url, preset, "bob@example.org", 0)
    schemas.add_mailbox(db_url, preset, "o'brien@example.org", 2000, active=False)
    store = SqlStore(db_url, PRESETS[preset])
    try:
        printed = "\n".join(store.migration_sql())
        assert "ALTER TABLE" in printed if preset == "postfixadmin" else "ALTER TABLE" not in printed
        store.migrate()
        assert store.migration_sql() == []
        boxes = {m.address: m for m in store.mailboxes()}
        assert boxes["alice@example.org"].limits == Limits(1000)
        assert boxes["bob@example.org"].limits.unlimited
        assert not boxes["o'brien@example.org"].enabled
        if preset == "postfixadmin":
            assert boxes["alice@example.org"].path == "example.org/alice/"
        with pytest.raises(StoreError, match="manage mailboxes there"):
            store.upsert_mailboxes([Mailbox("new@example.org")])

        statements = count_updates(store)
        store.save_readings(
            [reading("alice@example.org", 5000, State.OVER), reading("bob@example.org", 1)],
            [],
            {"alice@example.org": True, "bob@example.org": False},
        )
        assert flags(db_url, preset) == {"alice@example.org": 1, "bob@example.org": 0, "o'brien@example.org": 0}
        statements.clear()
        store.save_readings([reading("alice@example.org", 10)], [], {"alice@example.org": False})
        assert flags(db_url, preset)["alice@example.org"] == 0
        flag_updates = [rows for sql, rows in statements if sql.startswith("UPDATE") and "QUOTAGATE_STAMP" not in sql]
        assert sum(flag_updates) == 1  # the change stamp aside, only the flag that changed
        if preset == "postfixadmin":
            assert quota2(db_url) == {"alice@example.org": 10, "bob@example.org": 1}
    finally:
        store.close()


def test_an_address_too_long_for_quota2_never_stops_the_flags(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """PostfixAdmin's quota2.username holds 100 characters, its mailbox.username 255: one longer
    address (valid: a 64-character local part at a long subdomain) failed the whole transaction,
    and with it every flag of every scan."""
    long = "a" * 64 + "@mail.department-of-very-long-names.example.org"
    schemas.create(db_url, "postfixadmin")
    schemas.add_mailbox(db_url, "postfixadmin", "alice@example.org", 1000)
    schemas.add_mailbox(db_url, "postfixadmin", long, 1000)
    with SqlStore(db_url, PRESETS["postfixadmin"]) as store:
        store.migrate()
        store.save_readings(
            [reading("alice@example.org", 5000, State.OVER), reading(long, 5000, State.OVER)],
            [],
            {"alice@example.org": True, long: True},
        )
    assert flags(db_url, "postfixadmin") == {"alice@example.org": 1, long: 1}
    assert quota2(db_url) == {"alice@example.org": 5000}
    assert "1 address(es) longer than quota2.username holds (100 characters)" in caplog.text


def test_postfixadmins_active_alias_domains_are_read(db_url: str) -> None:
    """PostfixAdmin's alias_domain (boolean ``active`` on PostgreSQL, tinyint on MySQL), and the
    addresses in alias domains with alias rows of their own."""
    schemas.create(db_url, "postfixadmin")
    with SqlStore(db_url, PRESETS["postfixadmin"]) as store:
        assert store.domain_aliases() == AliasDomains()  # no such table: none
    schemas.add_alias_domains(
        db_url,
        {"Alias.Example": "example.org", "old.example": "example.org"},
        [("Own@Alias.Example", "x@example.org"), ("y@example.org", "y@example.org")],
        inactive={"old.example"},
    )
    with SqlStore(db_url, PRESETS["postfixadmin"]) as store:
        assert store.domain_aliases() == AliasDomains(
            {"alias.example": "example.org"}, frozenset({"own@alias.example"})
        )
    with SqlStore(db_url, PRESETS["classic"]) as store:
        assert store.domain_aliases() == AliasDomains()  # the classic recipe has none


def test_addresses_not_in_lower_case_are_said_once(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Exim's lookups compare the column byte for byte: a mixed-case row is no mailbox to them
    (and, named like another's detail, is taken for that one). The store reads it anyway."""
    schemas.create(db_url, "postfixadmin")
    schemas.add_mailbox(db_url, "postfixadmin", "John-Doe@Example.org", 1000)
    schemas.add_mailbox(db_url, "postfixadmin", "john@example.org", 1000)
    with SqlStore(db_url, PRESETS["postfixadmin"]) as store:
        store.migrate()
        assert {m.address for m in store.mailboxes()} == {"john-doe@example.org", "john@example.org"}
        store.mailboxes()
    said = [r.getMessage() for r in caplog.records if "not in lower case" in r.getMessage()]
    assert len(said) == 1 and "1 addresses in mailbox" in said[0] and "john-doe@example.org" in said[0]


def count_updates(store: Any) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []

    @event.listens_for(store.engine, "after_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append((statement.lstrip().upper(), cursor.rowcount))

    return seen


def flags(url: str, preset: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    column = PRESETS[preset].overquota
    sql = (
        f"SELECT username, domainname, {column} FROM mailbox"
        if preset == "classic"
        else f"SELECT username, '', {column} FROM mailbox"
    )
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    engine.dispose()
    return {(f"{u}@{d}" if d else u): int(f) for u, d, f in rows}


def quota2(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT username, bytes FROM quota2")).all()
    engine.dispose()
    return {u: int(b) for u, b in rows}


def test_a_version_1_store_upgrades_and_keeps_its_data(db_url: str) -> None:
    """A store from before usage history and change stamps: migrate adds the new tables and
    columns, the data stays, and the daemon's first refresh reads it all."""
    from quotagate.store import schema

    store = open_store(db_url)
    try:
        with store.engine.begin() as conn:  # type: ignore[attr-defined]
            for table in schema.MIGRATIONS[0].tables:
                as_in_version_1(table).create(conn)
            conn.execute(schema.schema_version.insert().values(version=1, description="v1", applied_at=0.0))
            conn.execute(
                as_in_version_1(schema.mailbox)
                .insert()
                .values(address="a@example.org", quota_bytes=5, quota_messages=0)
            )
        with pytest.raises(StoreError, match="quotagate db migrate"):
            store.mailboxes()
        printed = "\n".join(store.migration_sql())
        assert "CREATE TABLE quotagate_history" in printed and "CREATE TABLE quotagate_usage" not in printed
        assert "ALTER TABLE quotagate_usage ADD COLUMN changed" in printed
        widen = "ALTER TABLE quotagate_usage MODIFY COLUMN folders MEDIUMTEXT NOT NULL"
        assert (widen in printed) == db_url.startswith("mysql")
        assert store.migrate() == [
            "2: usage history and the warnings ledger",
            "3: change stamps, so the daemon refreshes only what changed",
            "4: what delivery agents weigh before they believe a maildirsize",
            "5: room for a mailbox's thousands of folders on MySQL and MariaDB",
        ]
        assert store.migration_sql() == []
        with store.engine.connect() as conn:  # type: ignore[attr-defined]
            folders = {c["name"]: c["type"] for c in inspect(conn).get_columns("quotagate_usage")}["folders"]
        assert folders.compile(dialect=store.engine.dialect) == ("MEDIUMTEXT" if db_url.startswith("mysql") else "TEXT")  # type: ignore[attr-defined]
        assert [m.address for m in store.mailboxes()] == ["a@example.org"]
        assert store.history(0) == {}
        first = store.changes(None)
        assert [m.address for m in first.mailboxes] == ["a@example.org"] and first.mailboxes_full
        assert store.changes(first.stamp).mailboxes == []
    finally:
        store.close()
