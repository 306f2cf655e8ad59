"""quotagate's own tables in an SQLite file, through the standard library's ``sqlite3``.

The default store, used by every cron scan and command: importing SQLAlchemy alone costs a
process about 0.2 s, more than the rest of a scan's start. The tables are SQLAlchemy's all the
same: :mod:`quotagate.store.schema` defines them and :class:`~quotagate.store.sql.SqlStore`
creates and migrates them (loaded only then); this store reads and writes them only at the
version its SQL was written for, and says "run quotagate db migrate" at any other, as the
SQLAlchemy store does. A URL with a driver (``sqlite+pysqlite://``), a query or an escape, an
in-memory database, or an admin's schema goes to SQLAlchemy instead (see :func:`fast_path`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from quotagate.config import StoreConfig
from quotagate.history import Retention, Sample, Stored, expiry, thin, tiers
from quotagate.model import AliasDomains, Limits, Mailbox, Reading, ScanSummary
from quotagate.store import rows
from quotagate.store.base import Changes, ClosedOnExit, Folders, StoreError
from quotagate.store.rows import STAMP_ROW

if TYPE_CHECKING:
    from quotagate.store.sql import SqlStore

# The schema version (quotagate.store.schema.LATEST) the statements below were written for.
SCHEMA_VERSION = 5
# As the SQLAlchemy store's busy_timeout: Exim's lookups and a scan's commit wait for each other.
_BUSY_SECONDS = 10.0
_PREFIX = "sqlite:///"

_MAILBOXES = "SELECT address, quota_bytes, quota_messages, enabled, path FROM quotagate_mailbox"
_READINGS = f"SELECT {', '.join(rows.USAGE_COLUMNS)} FROM quotagate_usage"
_LAST_SCAN = f"SELECT {', '.join(rows.SCAN_COLUMNS)} FROM quotagate_scan ORDER BY id DESC LIMIT 1"
_HISTORY = "SELECT address, at, bytes, messages FROM quotagate_history WHERE at >= ?"
_HISTORY_ORDER = " ORDER BY address, at, id"


def fast_path(config: StoreConfig) -> Path | None:
    """The file of quotagate's own tables that ``config`` names as ``sqlite:///PATH``, or None when
    SQLAlchemy should open it: another schema, a driver, query or %-escape in the URL, no file."""
    url = config.url
    if config.schema_ != "quotagate" or not url.startswith(_PREFIX):
        return None
    path = url[len(_PREFIX) :]
    if not path or path == ":memory:" or any(c in path for c in "?#%"):
        return None
    return Path(path)


def _next_stamp(conn: sqlite3.Connection) -> int:
    """A new change stamp for this write (see :data:`quotagate.store.schema.stamp`); the
    transaction holds SQLite's write lock, so stamps follow commit order."""
    conn.execute("UPDATE quotagate_stamp SET value = value + 1 WHERE name = ?", (STAMP_ROW,))
    return int(conn.execute("SELECT value FROM quotagate_stamp WHERE name = ?", (STAMP_ROW,)).fetchone()[0])


def _unmark_removed(conn: sqlite3.Connection, kind: str, addresses: Sequence[str]) -> None:
    conn.executemany("DELETE FROM quotagate_removed WHERE kind = ? AND address = ?", [(kind, a) for a in addresses])


def _insert(conn: sqlite3.Connection, table: str, values: Sequence[Mapping[str, object]], verb: str = "INSERT") -> None:
    """Insert rows given as column -> value, every row naming the same columns."""
    if not values:
        return
    names = list(values[0])
    conn.executemany(f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})", values)


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


class SqliteStore(ClosedOnExit):
    """One connection, opened on first use and shared by the threads of ``serve`` and ``watch``
    one statement or transaction at a time; every write a transaction taken up front (``BEGIN
    IMMEDIATE``), so it never fails half-way on a lock it could not upgrade."""

    scans_kept = rows.SCANS_KEPT

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ready = False  # the tables were seen at SCHEMA_VERSION
        self._delegate: SqlStore | None = None  # for changes(): the daemon's refreshes

    def close(self) -> None:
        if self._delegate is not None:
            self._delegate.close()
            self._delegate = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- connection, transactions, schema -----------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level None: no implicit transactions, each write says where it begins
            self._conn = sqlite3.connect(
                self.path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
        return self._conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.url}: {exc}") from exc

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, each statement its own consistent snapshot."""
        with self._lock, self._errors():
            conn = self._connection()
            self._require_schema(conn)
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one transaction, committed when the block ends, else rolled back."""
        with self._lock, self._errors():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._require_schema(conn)
                yield conn
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:  # an error, or a COMMIT that could not get its lock
                    conn.execute("ROLLBACK")

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quotagate_schema_version'"
        ).fetchone()
        if found is None:
            return 0
        version: int | None = conn.execute("SELECT max(version) FROM quotagate_schema_version").fetchone()[0]
        return version or 0

    def _require_schema(self, conn: sqlite3.Connection) -> None:
        if self._ready:
            return
        version = self._version(conn)
        if version < SCHEMA_VERSION:
            raise StoreError(f"store {self.url} is not set up: run 'quotagate db migrate'")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.url} has schema version {version}, newer than this quotagate's "
                f"{SCHEMA_VERSION}: upgrade quotagate"
            )
        self._ready = True

    def migrate(self) -> list[str]:
        """Nothing to do at :data:`SCHEMA_VERSION` (checked here, cheaply); else SQLAlchemy migrates."""
        with self._lock, self._errors():
            if self._version(self._connection()) == SCHEMA_VERSION:
                self._ready = True
                return []
        with self._sqlalchemy() as store:
            return store.migrate()

    def migration_sql(self) -> list[str]:
        with self._sqlalchemy() as store:
            return store.migration_sql()

    def _sqlalchemy(self) -> SqlStore:
        from quotagate.store.sql import SqlStore

        return SqlStore(self.url)

    # -- the directory ---------------------------------------------------------------------
    def upsert_mailboxes(self, mailboxes: Sequence[Mailbox]) -> None:
        values = [
            {
                "address": m.address,
                "quota_bytes": m.limits.bytes,
                "quota_messages": m.limits.messages,
                "enabled": m.enabled,
                "path": m.path,
            }
            for m in mailboxes
        ]
        with self._writing() as conn:
            stamp = _next_stamp(conn)
            _unmark_removed(conn, "mailbox", [m.address for m in mailboxes])
            _insert(conn, "quotagate_mailbox", [{**v, "changed": stamp} for v in values], "INSERT OR REPLACE")

    def mailboxes(self) -> list[Mailbox]:
        with self._reading() as conn:
            found = conn.execute(_MAILBOXES + " ORDER BY address").fetchall()
        return [Mailbox(a, Limits(qb, qm), bool(e), p) for a, qb, qm, e, p in found]

    def mailbox(self, address: str) -> Mailbox | None:
        with self._reading() as conn:
            row = conn.execute(_MAILBOXES + " WHERE address = ?", (address,)).fetchone()
        if row is None:
            return None
        a, qb, qm, e, p = row
        return Mailbox(a, Limits(qb, qm), bool(e), p)

    def domain_aliases(self) -> AliasDomains:
        return AliasDomains()  # quotagate's own schema has none: list each address

    # -- readings --------------------------------------------------------------------------
    def readings(self, with_folders: bool = True) -> dict[str, Reading]:
        with self._reading() as conn:
            found = conn.execute(_READINGS).fetchall()
        return {row[0]: rows.reading(row, with_folders) for row in found}

    def reading(self, address: str) -> Reading | None:
        with self._reading() as conn:
            row = conn.execute(_READINGS + " WHERE address = ?", (address,)).fetchone()
        return None if row is None else rows.reading(row)

    def save_readings(
        self, changed: Sequence[Reading], removed: Collection[str], flags: Mapping[str, bool] | None = None
    ) -> None:
        """``flags`` needs no writing of its own: quotagate's tables keep the flag in the usage row."""
        if not changed and not removed:
            return
        with self._writing() as conn:
            # Stamped as SqlStore stamps them: the daemon's refreshes read only what changed.
            stamp = _next_stamp(conn)
            written = {r.address for r in changed}
            gone = sorted(set(removed) - written)
            conn.executemany("DELETE FROM quotagate_usage WHERE address = ?", [(a,) for a in gone])
            _unmark_removed(conn, "usage", [*gone, *written])
            _insert(conn, "quotagate_removed", [{"kind": "usage", "address": a, "changed": stamp} for a in gone])
            usage = [{**rows.usage_row(r), "changed": stamp} for r in changed]
            _insert(conn, "quotagate_usage", usage, "INSERT OR REPLACE")

    def changes(self, since: int | None, with_readings: bool = True, with_folders: Folders = True) -> Changes:
        """The daemon's incremental refresh: SQLAlchemy's store reads the stamps (the daemon has
        loaded SQLAlchemy anyway; a scan never asks)."""
        if self._delegate is None:
            self._delegate = self._sqlalchemy()
        return self._delegate.changes(since, with_readings, with_folders)

    def record_scan(self, summary: ScanSummary) -> None:
        """Add ``summary`` and drop all but the latest :attr:`scans_kept`, in one transaction."""
        with self._writing() as conn:
            _insert(conn, "quotagate_scan", [{k: getattr(summary, k) for k in rows.SCAN_COLUMNS}])
            conn.execute(
                "DELETE FROM quotagate_scan WHERE id <= (SELECT max(id) FROM quotagate_scan) - ?", (self.scans_kept,)
            )

    def last_scan(self) -> ScanSummary | None:
        with self._reading() as conn:
            row = conn.execute(_LAST_SCAN).fetchone()
        return None if row is None else rows.scan_summary(row)

    # -- usage history -----------------------------------------------------------------------
    def record_history(self, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        values = [
            {"address": s.address, "at": s.at, "bytes": s.bytes, "messages": s.messages, "resolution": 0}
            for s in samples
        ]
        with self._writing() as conn:
            _insert(conn, "quotagate_history", values)

    def history(self, since: float, addresses: Collection[str] | None = None) -> dict[str, list[Sample]]:
        found: dict[str, list[Sample]] = {}
        with self._reading() as conn:
            if addresses is None:
                selected = [conn.execute(_HISTORY + _HISTORY_ORDER, (since,)).fetchall()]
            else:
                selected = [
                    conn.execute(
                        f"{_HISTORY} AND address IN ({_marks(chunk)}){_HISTORY_ORDER}", (since, *chunk)
                    ).fetchall()
                    for chunk in rows.batches(sorted(addresses))
                ]
        for part in selected:
            for address, at, b, m in part:
                found.setdefault(address, []).append(Sample(address, at, b, m))
        return found

    def prune_history(self, now: float, retention: Retention) -> int:
        """Each tier reads only the rows still finer than it and old enough for it (an index)."""
        with self._writing() as conn:
            gone: int = conn.execute("DELETE FROM quotagate_history WHERE at < ?", (expiry(now, retention),)).rowcount
            for tier in tiers(now, retention):
                aged = conn.execute(
                    "SELECT id, address, at FROM quotagate_history WHERE resolution < ? AND at < ?",
                    (tier.resolution, tier.before),
                ).fetchall()
                keep, drop = thin((Stored(*row) for row in aged), tier.bucket)
                conn.executemany(
                    "UPDATE quotagate_history SET resolution = ? WHERE id = ?", [(tier.resolution, i) for i in keep]
                )
                conn.executemany("DELETE FROM quotagate_history WHERE id = ?", [(i,) for i in drop])
                gone += len(drop)
        return gone

    # -- the warnings ledger -----------------------------------------------------------------
    def sent_warnings(self) -> dict[str, set[str]]:
        sent: dict[str, set[str]] = {}
        with self._reading() as conn:
            found = conn.execute("SELECT address, notice FROM quotagate_warning").fetchall()
        for address, notice in found:
            sent.setdefault(address, set()).add(notice)
        return sent

    def claim_warning(self, address: str, notice: str, at: float) -> bool:
        """The primary key decides between hosts claiming at once."""
        with self._writing() as conn:
            try:
                conn.execute(
                    "INSERT INTO quotagate_warning (address, notice, sent_at) VALUES (?, ?, ?)", (address, notice, at)
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def release_warnings(self, address: str, notices: Collection[str]) -> None:
        if not notices:
            return
        chosen = sorted(notices)
        with self._writing() as conn:
            conn.execute(
                f"DELETE FROM quotagate_warning WHERE address = ? AND notice IN ({_marks(chosen)})", (address, *chosen)
            )
