"""quotagate's own tables and the versioned migrations that create them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.mysql import MEDIUMTEXT

from quotagate.store import rows

metadata = MetaData()
ADDRESS = String(320)  # RFC 5321: 64 + 1 + 255, rounded up
# A text that may be long: MySQL's and MariaDB's TEXT holds 64 KiB, a mailbox's folder listing
# (up to quotagate.usage.maildir.MAX_FOLDERS folders) some MB; MEDIUMTEXT holds 16 MiB.
LONG_TEXT = Text().with_variant(MEDIUMTEXT(), "mysql", "mariadb")


def _changed() -> Column[int]:
    """The change stamp of the write that last touched a row (see :data:`stamp`); 0 for rows
    from before migration 3, which only a full load reads."""
    return Column("changed", BigInteger, nullable=False, server_default="0")


schema_version = Table(
    "quotagate_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", Double, nullable=False),
)

mailbox = Table(
    "quotagate_mailbox",
    metadata,
    Column("address", ADDRESS, primary_key=True),
    Column("quota_bytes", BigInteger, nullable=False, default=0),
    Column("quota_messages", BigInteger, nullable=False, default=0),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("path", Text, nullable=True),
    _changed(),
    Index("ix_quotagate_mailbox_changed", "changed"),
)

usage = Table(
    "quotagate_usage",
    metadata,
    Column("address", ADDRESS, primary_key=True),
    Column("path", Text, nullable=False),
    Column("format", String(16), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("messages", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    # 0/1 rather than a boolean: one lookup (over_quota = '1') works in every SQL dialect Exim speaks.
    Column("over_quota", SmallInteger, nullable=False),
    Column("reason", Text, nullable=True),
    Column("root_stamp", BigInteger, nullable=True),
    Column("maildirsize_bytes", BigInteger, nullable=True),
    Column("maildirsize_messages", BigInteger, nullable=True),
    Column("maildirsize_definition", String(200), nullable=True),
    # What the agents weigh before they believe the maildirsize: "size_lines file_bytes mtime".
    Column("maildirsize_facts", String(64), nullable=True),
    Column("measured_at", Double, nullable=False),
    # Per-folder usage as JSON: [[name, bytes, messages, stamp or null], ...]. One row per mailbox
    # keeps an incremental scan's load to one fast query; PostgreSQL and MySQL can still query it.
    Column("folders", LONG_TEXT, nullable=False),
    _changed(),
    Index("ix_quotagate_usage_changed", "changed"),
)

# The change stamp: one row, counted up by every write of mailboxes or readings inside that
# write's transaction, so writers take stamps in commit order (the row is locked until commit).
# A reader that reads the stamp first and then the rows stamped after its last one misses no
# committed write: the daemon refreshes from what changed instead of reloading everything.
stamp = Table(
    "quotagate_stamp",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
STAMP_ROW = rows.STAMP_ROW

# What a write removed, with its stamp: a row that is gone says nothing by itself. ``kind`` is
# "mailbox" or "usage". A row written again takes its address out of here in the same write.
removed = Table(
    "quotagate_removed",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("address", ADDRESS, primary_key=True),
    Column("changed", BigInteger, nullable=False),
    Index("ix_quotagate_removed_changed", "changed"),
)

scan = Table(
    "quotagate_scan",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", Double, nullable=False),
    Column("finished_at", Double, nullable=False),
    Column("full", Boolean, nullable=False),
    Column("mailboxes", Integer, nullable=False),
    Column("measured", Integer, nullable=False),
    Column("messages", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("over", Integer, nullable=False),
    Column("unknown", Integer, nullable=False),
    Column("written", Integer, nullable=False),
)


# Usage over time, for forecasts and charts (see quotagate.history): one row per sample, thinned
# with age. ``resolution`` (0 raw, 1 hourly, 2 daily) lets a prune read only the rows that crossed
# an age boundary since the last one; the index serves it, the other one the reads per mailbox.
history = Table(
    "quotagate_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("address", ADDRESS, nullable=False),
    Column("at", Double, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("messages", BigInteger, nullable=False),
    Column("resolution", SmallInteger, nullable=False, default=0),
    Index("ix_quotagate_history_address_at", "address", "at"),
    Index("ix_quotagate_history_resolution_at", "resolution", "at"),
)

# The warnings ledger: one row per warning sent and not re-armed since. The primary key makes a
# claim atomic, so two hosts (or a restart half-way) never send the same warning twice.
warning = Table(
    "quotagate_warning",
    metadata,
    Column("address", ADDRESS, primary_key=True),
    Column("notice", String(32), primary_key=True),
    Column("sent_at", Double, nullable=False),
)


@dataclass(frozen=True)
class Migration:
    """New tables, and new columns (each with its index, if any) for tables an earlier migration
    made: a store made since already has them, and only the missing ones are added. ``widened``:
    columns of earlier tables whose type grew on MySQL and MariaDB (elsewhere the type was
    unbounded already), altered there in place."""

    version: int
    description: str
    tables: tuple[Table, ...]
    columns: tuple[tuple[Table, str], ...] = ()
    widened: tuple[tuple[Table, str], ...] = ()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "quotagate's own tables", (schema_version, mailbox, usage, scan)),
    Migration(2, "usage history and the warnings ledger", (history, warning)),
    Migration(
        3,
        "change stamps, so the daemon refreshes only what changed",
        (stamp, removed),
        ((mailbox, "changed"), (usage, "changed")),
    ),
    Migration(
        4,
        "what delivery agents weigh before they believe a maildirsize",
        (),
        ((usage, "maildirsize_facts"),),
    ),
    Migration(
        5,
        "room for a mailbox's thousands of folders on MySQL and MariaDB",
        (),
        widened=((usage, "folders"),),
    ),
)
LATEST = MIGRATIONS[-1].version
