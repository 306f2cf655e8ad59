"""The SQL store (SQLite by default; PostgreSQL and MySQL/MariaDB through the same SQLAlchemy code)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from quotagate.address import BadAddress, normalize
from quotagate.config import StoreConfig
from quotagate.errors import one_line
from quotagate.history import Retention, Sample, Stored, expiry, thin, tiers
from quotagate.model import (
    AliasDomains,
    Limits,
    Mailbox,
    Reading,
    ScanSummary,
    State,
)
from quotagate.sizes import MAX_COUNT
from quotagate.store import redacted, rows, schema
from quotagate.store.base import Changes, ClosedOnExit, Folders, StoreError
from quotagate.store.presets import PRESETS, MailboxTable, mailbox_table

log = logging.getLogger(__name__)
T = TypeVar("T")
BATCH = 1000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # A rollback journal, not WAL: Exim's lookups run as the Exim user, and WAL readers need
    # write access to the database's folder. Exim's sqlite_lock_timeout waits out a scan's commit.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 10000")
    cur.close()


_Odd = tuple[str, str, object, str]  # a value not read: address, column, value, taken as

_YES = frozenset({"y", "yes", "t", "true", "on"})
_NO = frozenset({"n", "no", "f", "false", "off"})


def _flag(value: object) -> bool | None:
    """An enabled/``active`` column as tables keep it: a boolean (PostgreSQL), a number (MySQL,
    SQLite: 0 is off; MySQL's BIT(1) as bytes), or text (``Y``/``N``, ``t``/``f``, yes/no, on/off,
    digits); NULL and empty are on, as an empty cell of ``mailbox import`` is. None for anything
    else."""
    if value is None or isinstance(value, bool):
        return value is None or value
    if type(value) is int:  # what most tables hold: every row of every refresh comes here
        return value != 0
    value = _text_of(value)
    text = str(value).strip().lower()
    if not text or text in _YES or text in _NO:
        return not text or text in _YES
    number = _number(value)
    return None if number is None else number != 0


def _text_of(value: object) -> object:
    """Bytes as a column gives them (MySQL's BIT, VARBINARY): digits as text, else a big-endian
    number (BIT(1)'s b'\\x01'). Anything else as it is."""
    if not isinstance(value, bytes | bytearray):
        return value
    if value.strip().isdigit():
        return value.decode("ascii")
    return int.from_bytes(value, "big") if len(value) <= 8 else value


def _active(value: object) -> bool:
    """:func:`_flag`, a value it cannot read being on (as NULL is)."""
    return _flag(value) is not False


def _number(value: object) -> Decimal | None:
    """A quota or count column's value: an integer, a decimal or a float, or one written as
    text; NULL or empty is 0. None for anything else (``500M``, NaN)."""
    if value is None:
        return Decimal(0)
    value = _text_of(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    try:
        number = Decimal(str(value).strip() or "0")
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _quota2_table(name: str) -> Table:
    """Dovecot's dict-quota table as PostfixAdmin creates it."""
    return Table(
        name,
        MetaData(),
        Column("username", String(100), primary_key=True),
        Column("bytes", BigInteger, nullable=False, default=0),
        Column("messages", Integer, nullable=False, default=0),
    )


def database_said(exc: SQLAlchemyError) -> str:
    """What the database (or its driver) said, in one line, without SQLAlchemy's wrapping."""
    return one_line(str(exc.orig if isinstance(exc, DBAPIError) else exc))


class SqlStore(ClosedOnExit):
    """quotagate's own tables in any database SQLAlchemy speaks to."""

    # Scan summaries kept: only the last one is read (by the daemon and check); the rest is
    # history for the admin. A scan a minute keeps the last 16 hours, a scan an hour six weeks.
    scans_kept = 1000

    def __init__(self, url: str, table: MailboxTable | None = None) -> None:
        self.table = table or PRESETS["quotagate"]
        self._admin_table: Table | None = None
        self._quota2_room: int | None = None
        self._said_mixed = False
        self._said_odd: set[tuple[str, str]] = set()  # (address, column) with a value said unreadable
        self._alias_tables: tuple[Table, Table | None] | None = None
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # A connection a database restart closed is found out (and replaced) when it is taken
        # from the pool, not by the query that would fail on it.
        self.engine: Engine = create_engine(parsed, future=True, pool_pre_ping=parsed.get_backend_name() != "sqlite")
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.url = redacted(parsed.render_as_string(hide_password=True))

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------------------
    def _version(self, conn: Connection) -> int:
        if not inspect(conn).has_table(schema.schema_version.name):
            return 0
        return conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0

    def _pending(self, conn: Connection) -> list[schema.Migration]:
        current = self._version(conn)
        return [m for m in schema.MIGRATIONS if m.version > current]

    def _create_sql(self, table: Table) -> str:
        dialect = self.engine.dialect
        indexes = sorted(table.indexes, key=lambda i: str(i.name))
        shown = [
            str(CreateTable(table).compile(dialect=dialect)),
            *(str(CreateIndex(i).compile(dialect=dialect)) for i in indexes),
        ]
        return "\n".join(s.strip() + ";" for s in shown)

    def _admin_changes(self, conn: Connection) -> list[tuple[str, str]]:
        """(description, SQL) of what quotagate adds to the admin's schema: never drops or rewrites."""
        t = self.table
        if t.own:
            return []
        insp = inspect(conn)
        if not insp.has_table(t.table):
            raise StoreError(f"store {self.url}: no table {t.table!r} (schema preset or [store.columns] wrong?)")
        changes = []
        columns = {c["name"] for c in insp.get_columns(t.table)}
        quote = self.engine.dialect.identifier_preparer.quote
        if t.overquota and t.overquota not in columns:
            changes.append(
                (
                    f"over-quota flag column {t.table}.{t.overquota}",
                    f"ALTER TABLE {quote(t.table)} ADD COLUMN {quote(t.overquota)} SMALLINT NOT NULL DEFAULT 0;",
                )
            )
        if t.usage_table and not insp.has_table(t.usage_table):
            changes.append((f"usage table {t.usage_table}", self._create_sql(_quota2_table(t.usage_table))))
        return changes

    def _missing_columns(self, conn: Connection, migration: schema.Migration) -> list[tuple[Table, Column[Any]]]:
        """The columns ``migration`` adds that an earlier table lacks (a store made since has them)."""
        insp = inspect(conn)
        missing = []
        for table, name in migration.columns:
            if insp.has_table(table.name) and name not in {c["name"] for c in insp.get_columns(table.name)}:
                missing.append((table, table.c[name]))
        return missing

    def _widen_sql(self, conn: Connection, migration: schema.Migration) -> list[str]:
        """ALTER TABLE ... MODIFY COLUMN for the columns ``migration`` widens that are narrower
        here (MySQL and MariaDB only: elsewhere their type was unbounded from the start)."""
        dialect = self.engine.dialect
        if dialect.name not in ("mysql", "mariadb") or not migration.widened:
            return []
        insp = inspect(conn)
        statements = []
        for table, name in migration.widened:
            if not insp.has_table(table.name):
                continue
            column = table.c[name]
            wanted = column.type.compile(dialect=dialect)
            found = {c["name"]: c["type"] for c in insp.get_columns(table.name)}.get(name)
            if found is not None and found.compile(dialect=dialect) != wanted:
                spec = str(CreateColumn(column).compile(dialect=dialect)).strip()
                statements.append(f"ALTER TABLE {dialect.identifier_preparer.quote(table.name)} MODIFY COLUMN {spec};")
        return statements

    def _add_column_sql(self, table: Table, column: Column[Any]) -> list[str]:
        """ALTER TABLE ... ADD COLUMN, and the indexes on that column."""
        dialect = self.engine.dialect
        quote = dialect.identifier_preparer.quote
        spec = str(CreateColumn(column).compile(dialect=dialect)).strip()
        indexes = sorted((i for i in table.indexes if column.name in i.columns), key=lambda i: str(i.name))
        return [
            f"ALTER TABLE {quote(table.name)} ADD COLUMN {spec};",
            *(str(CreateIndex(i).compile(dialect=dialect)).strip() + ";" for i in indexes),
        ]

    def migration_sql(self) -> list[str]:
        with self._connect() as conn:
            pending = self._pending(conn)
            admin = self._admin_changes(conn)
            added = [
                sql for m in pending for t, c in self._missing_columns(conn, m) for sql in self._add_column_sql(t, c)
            ]
            added += [sql for m in pending for sql in self._widen_sql(conn, m)]
        return [self._create_sql(t) for m in pending for t in m.tables] + added + [sql for _, sql in admin]

    def migrate(self) -> list[str]:
        applied = []
        with self._begin() as conn:
            for description, sql in self._admin_changes(conn):
                conn.exec_driver_sql(sql.rstrip(";"))
                applied.append(description)
            self._admin_table = None
            for m in self._pending(conn):
                for table in m.tables:
                    table.create(conn, checkfirst=True)
                for table, column in self._missing_columns(conn, m):
                    for sql in self._add_column_sql(table, column):
                        conn.exec_driver_sql(sql.rstrip(";"))
                for sql in self._widen_sql(conn, m):
                    conn.exec_driver_sql(sql.rstrip(";"))
                if schema.stamp in m.tables:
                    conn.execute(insert(schema.stamp).values(name=schema.STAMP_ROW, value=0))
                conn.execute(
                    insert(schema.schema_version).values(
                        version=m.version, description=m.description, applied_at=time.time()
                    )
                )
                applied.append(f"{m.version}: {m.description}")
        return applied

    def _connect(self) -> AbstractContextManager[Connection]:
        return self._opened(begin=False)

    def _begin(self) -> AbstractContextManager[Connection]:
        return self._opened(begin=True)

    @contextmanager
    def _opened(self, begin: bool) -> Iterator[Connection]:
        """A connection (in a transaction with ``begin``); the database failing while it is used
        (a server restarted mid-way, a failover) is a StoreError, as one down at connect is, so
        every caller takes it for an outage (one line logged, tried again), never for a bug. A
        constraint a caller counts on (IntegrityError: a row another host claimed) stays as it is."""
        used = False
        try:
            opened = self.engine.begin() if begin else self.engine.connect()
            with opened as conn:
                used = True
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"{'store' if used else 'cannot open store'} {self.url}: {database_said(exc)}") from exc
        except (TypeError, AttributeError, LookupError, ValueError, OSError) as exc:
            if used:
                raise
            # The driver refused what the URL's query gave it (pymysql: "?charset=utf-8", a
            # misspelt option, an ssl_ca file that is not there), before any connection.
            said = one_line(f"{type(exc).__name__}: {exc}")
            raise StoreError(f"cannot open store {self.url}: the driver refused the URL's options: {said}") from exc

    def _require_schema(self, conn: Connection) -> None:
        if self._version(conn) < schema.LATEST:
            raise StoreError(f"store {self.url} is not set up: run 'quotagate db migrate'")

    # -- the directory ---------------------------------------------------------------------
    def upsert_mailboxes(self, mailboxes: Sequence[Mailbox]) -> None:
        if not self.table.own:
            raise StoreError(f"the directory is your table {self.table.table!r}: manage mailboxes there")
        t = schema.mailbox
        with self._begin() as conn:
            self._require_schema(conn)
            changed = self._next_stamp(conn)
            for chunk in rows.batches(mailboxes):
                addresses = [m.address for m in chunk]
                conn.execute(delete(t).where(t.c.address.in_(addresses)))
                self._unmark_removed(conn, "mailbox", addresses)
                conn.execute(
                    insert(t),
                    [
                        {
                            "address": m.address,
                            "quota_bytes": m.limits.bytes,
                            "quota_messages": m.limits.messages,
                            "enabled": m.enabled,
                            "path": m.path,
                            "changed": changed,
                        }
                        for m in chunk
                    ],
                )

    # -- change stamps -----------------------------------------------------------------------
    @staticmethod
    def _stamp(conn: Connection) -> int:
        s = schema.stamp
        return int(conn.execute(select(s.c.value).where(s.c.name == schema.STAMP_ROW)).scalar_one())

    def _next_stamp(self, conn: Connection) -> int:
        """A new change stamp for this write; the stamp's row stays locked until it commits, so
        stamps are taken in commit order (see :data:`quotagate.store.schema.stamp`)."""
        s = schema.stamp
        conn.execute(update(s).where(s.c.name == schema.STAMP_ROW).values(value=s.c.value + 1))
        return self._stamp(conn)

    @staticmethod
    def _unmark_removed(conn: Connection, kind: str, addresses: Sequence[str]) -> None:
        r = schema.removed
        conn.execute(delete(r).where(r.c.kind == kind, r.c.address.in_(addresses)))

    @staticmethod
    def _removed_since(conn: Connection, kind: str, since: int, written: Mapping[str, int]) -> list[str]:
        """Addresses removed after ``since`` and not written again after their removal."""
        r = schema.removed
        found = conn.execute(select(r.c.address, r.c.changed).where(r.c.kind == kind, r.c.changed > since))
        return [a for a, at in found if written.get(a, -1) < at]

    def changes(self, since: int | None, with_readings: bool = True, with_folders: Folders = True) -> Changes:
        """Reads the stamp first, then what was written after ``since``: every write stamped up to
        that stamp had committed by then (a later one read too is read again next time)."""
        with self._connect() as conn:
            self._require_schema(conn)
            current = self._stamp(conn)
            full = since is None or since > current  # another or a restored database: start over
            after = -1 if since is None or full else since
            if self.table.own:
                t = schema.mailbox
                columns = (t.c.address, t.c.quota_bytes, t.c.quota_messages, t.c.enabled, t.c.path, t.c.changed)
                query = select(*columns).where(t.c.changed > after) if not full else select(*columns)
                stamped = {a: (Mailbox(a, Limits(qb, qm), bool(e), p), c) for a, qb, qm, e, p, c in conn.execute(query)}
                mailboxes = [m for m, _ in stamped.values()]
                gone = (
                    [] if full else self._removed_since(conn, "mailbox", after, {a: c for a, (_, c) in stamped.items()})
                )
                mailboxes_full = full
                count = conn.execute(select(func.count()).select_from(t)).scalar_one()
            else:  # the admin's table has no stamp: read it all
                mailboxes, gone, mailboxes_full = self._admin_mailboxes(conn, None), [], True
                count = len(mailboxes)
            readings: list[Reading] = []
            dropped: list[str] = []
            if with_readings:
                written = self._stamped_readings(conn, None if full else after, with_folders)
                readings = [r for r, _ in written.values()]
                if not full:
                    dropped = self._removed_since(conn, "usage", after, {a: c for a, (_, c) in written.items()})
            last = self._last_scan(conn)
        return Changes(
            current, mailboxes_full, mailboxes, gone, full or not with_readings, readings, dropped, last, count
        )

    @staticmethod
    def _mailbox(row: Any) -> Mailbox:
        return Mailbox(row.address, Limits(row.quota_bytes, row.quota_messages), bool(row.enabled), row.path)

    def mailboxes(self) -> list[Mailbox]:
        with self._connect() as conn:
            self._require_schema(conn)
            if not self.table.own:
                return sorted(self._admin_mailboxes(conn, None), key=lambda m: m.address)
            t = schema.mailbox
            found = conn.execute(
                select(t.c.address, t.c.quota_bytes, t.c.quota_messages, t.c.enabled, t.c.path).order_by(t.c.address)
            )
            return [Mailbox(a, Limits(qb, qm), bool(e), p) for a, qb, qm, e, p in found]

    def mailbox(self, address: str) -> Mailbox | None:
        with self._connect() as conn:
            self._require_schema(conn)
            if not self.table.own:
                found = self._admin_mailboxes(conn, address)
                return found[0] if found else None
            row = conn.execute(select(schema.mailbox).where(schema.mailbox.c.address == address)).first()
            return None if row is None else self._mailbox(row)

    # -- the admin's schema ----------------------------------------------------------------
    def domain_aliases(self) -> AliasDomains:
        name = self.table.alias_domain_table
        if not name:
            return AliasDomains()
        with self._connect() as conn:
            if self._alias_tables is None:  # reflected once: the daemon asks at every refresh
                if not inspect(conn).has_table(name):
                    return AliasDomains()  # a PostfixAdmin without alias domains
                domains = Table(name, MetaData(), autoload_with=conn)
                has_aliases = inspect(conn).has_table(self.table.alias_table)
                aliases = Table(self.table.alias_table, MetaData(), autoload_with=conn) if has_aliases else None
                self._alias_tables = (domains, aliases)
            d, a = self._alias_tables
            rows = conn.execute(select(d.c.alias_domain, d.c.target_domain, d.c.active)).all()
            targets = {
                alias.strip().lower(): target.strip().lower()
                for alias, target, active in rows
                if _active(active) and alias and target and alias.strip() != target.strip()
            }
            own: set[str] = set()
            if a is not None and targets:
                query = select(a.c.address, a.c.active).where(func.lower(a.c.domain).in_(sorted(targets)))
                own = {address.strip().lower() for address, active in conn.execute(query) if _active(active)}
        return AliasDomains(targets, frozenset(own))

    def _admin(self, conn: Connection) -> Table:
        if self._admin_table is None:
            self._admin_table = Table(self.table.table, MetaData(), autoload_with=conn)
        return self._admin_table

    def _key_matches(self, t: Table, address: str) -> Any:
        """A WHERE clause finding ``address`` in the admin's table, case-insensitively."""
        names = self.table
        if names.address:
            return func.lower(t.c[names.address]) == address
        local, _, domain = address.rpartition("@")
        return (func.lower(t.c[names.local_part]) == local) & (func.lower(t.c[names.domain]) == domain)

    def _admin_mailboxes(self, conn: Connection, address: str | None) -> list[Mailbox]:
        names = self.table
        t = self._admin(conn)
        wanted = [
            n
            for n in (
                names.address,
                names.local_part,
                names.domain,
                names.quota,
                names.messages,
                names.enabled,
                names.path,
            )
            if n
        ]
        try:
            query = select(*(t.c[n] for n in wanted))
        except KeyError as exc:
            raise StoreError(f"table {names.table!r} has no column {exc} (see [store.columns])") from None
        if address is not None:
            query = query.where(self._key_matches(t, address))
        found = []
        mixed = []
        odd: list[_Odd] = []
        for row in conn.execute(query):
            m = row._mapping
            raw = m[names.address] if names.address else f"{m[names.local_part]}@{m[names.domain]}"
            try:
                key = normalize(str(raw))
            except BadAddress as exc:
                log.warning("skipping a row of %s: %s", names.table, exc)
                continue
            if key != str(raw):
                mixed.append(key)
            quota = self._amount(m, names.quota, names.quota_unit, key, odd)
            messages = self._amount(m, names.messages, 1, key, odd)
            enabled = _flag(m[names.enabled]) if names.enabled else True
            if enabled is None:
                odd.append((key, names.enabled, m[names.enabled], "enabled"))
            path = (m[names.path] or None) if names.path else None
            found.append(Mailbox(key, Limits(max(quota, 0), max(messages, 0)), enabled is not False, path))
        self._say_odd(odd)
        if mixed and address is None and not self._said_mixed:
            self._said_mixed = True  # once a process: the daemon reads the table at every refresh
            log.warning(
                "%d addresses in %s are not in lower case (%s): Exim's lookups compare the column"
                " byte for byte, so they do not find these mailboxes (and one named like another's"
                " detail, john-Doe beside a full john, is taken for it): store them in lower case",
                len(mixed),
                names.table,
                ", ".join(sorted(mixed)[:5]),
            )
        return found

    @staticmethod
    def _amount(row: Mapping[Any, Any], column: str, unit: int, key: str, odd: list[_Odd]) -> int:
        """A limit in bytes (or messages) from ``column`` counted in ``unit`` (``quota_unit``:
        0.5 in a column of gigabytes is 512M, not 0); 0 (unlimited) for no column, and for a
        value that is not a number or is past 2^63 - 1, which goes to ``odd``."""
        if not column:
            return 0
        raw = row[column]
        if type(raw) is int and 0 <= raw * unit <= MAX_COUNT:  # what most tables hold, at once
            return int(raw * unit)
        number = _number(raw)
        amount = None if number is None else int(number * unit)
        if amount is None or amount > MAX_COUNT:  # more than any store, or the daemon, keeps
            odd.append((key, column, row[column], "unlimited"))
            return 0
        return amount

    def _say_odd(self, odd: list[_Odd]) -> None:
        """Values the table holds that quotagate cannot read, each said once a process (the
        daemon reads the table at every refresh): the scan goes on with the rest."""
        new = [o for o in odd if (o[0], o[1]) not in self._said_odd]
        if not new:
            return
        self._said_odd.update((address, column) for address, column, _, _ in new)
        shown = "; ".join(
            f"{address}: {column} {value!r}, taken as {taken}" for address, column, value, taken in new[:5]
        )
        more = f" (and {len(new) - 5} more)" if len(new) > 5 else ""
        log.warning(
            "%d values in %s are not what quotagate reads there (a number; for an enabled column also"
            " yes/no, Y/N, t/f, on/off): %s%s",
            len(new),
            self.table.table,
            shown,
            more,
        )

    def _publish_flags(self, conn: Connection, flags: Mapping[str, bool]) -> None:
        """Set the admin's over-quota flag for the mailboxes whose flag changed, and only those."""
        names = self.table
        if not names.overquota or not flags:
            return
        t = self._admin(conn)
        flag = t.c[names.overquota]
        boolean = isinstance(flag.type, Boolean)
        if names.address:
            where = func.lower(t.c[names.address]) == bindparam("k_address")
        else:
            where = (func.lower(t.c[names.local_part]) == bindparam("k_local")) & (
                func.lower(t.c[names.domain]) == bindparam("k_domain")
            )
        stmt = update(t).where(where).values({names.overquota: bindparam("v_flag")})
        params = []
        for address, over in sorted(flags.items()):
            local, _, domain = address.rpartition("@")
            value: bool | int = over if boolean else int(over)
            params.append({"k_address": address, "k_local": local, "k_domain": domain, "v_flag": value})
        for chunk in rows.batches(params):
            conn.execute(stmt, list(chunk))

    def _publish_usage(self, conn: Connection, changed: Sequence[Reading]) -> None:
        """Keep the Dovecot dict-quota table (``quota2``) in step with measured usage."""
        if not self.table.usage_table:
            return
        q = _quota2_table(self.table.usage_table)
        room = self._username_room(conn, q.name)
        known = [r for r in changed if r.state is not State.UNKNOWN and len(r.address) <= room]
        if too_long := sorted(r.address for r in changed if len(r.address) > room):
            # One such row would fail the whole transaction, and with it every flag of the scan.
            log.warning(
                "%d address(es) longer than %s.username holds (%d characters), their usage not written"
                " there (widen the column): %s",
                len(too_long),
                q.name,
                room,
                ", ".join(too_long[:5]),
            )
        for chunk in rows.batches(known):
            conn.execute(delete(q).where(q.c.username.in_([r.address for r in chunk])))
            conn.execute(insert(q), [{"username": r.address, "bytes": r.bytes, "messages": r.messages} for r in chunk])

    def _username_room(self, conn: Connection, table: str) -> int:
        """How many characters the admin's ``quota2.username`` holds (PostfixAdmin: 100, less
        than its mailbox table's 255), asked of the database once."""
        if self._quota2_room is None:
            length = next(
                (
                    getattr(c["type"], "length", None)
                    for c in inspect(conn).get_columns(table)
                    if c["name"] == "username"
                ),
                None,
            )
            self._quota2_room = length if isinstance(length, int) and length > 0 else 1 << 30
        return self._quota2_room

    # -- readings --------------------------------------------------------------------------
    def _load(self, conn: Connection, address: str | None, with_folders: bool = True) -> dict[str, Reading]:
        where = None if address is None else schema.usage.c.address == address
        return {a: r for a, (r, _) in self._readings_where(conn, where, with_folders).items()}

    def _stamped_readings(
        self, conn: Connection, after: int | None, with_folders: Folders
    ) -> dict[str, tuple[Reading, int]]:
        where = None if after is None else schema.usage.c.changed > after
        return self._readings_where(conn, where, with_folders)

    @staticmethod
    def _readings_where(conn: Connection, where: Any, with_folders: Folders) -> dict[str, tuple[Reading, int]]:
        """Readings (all, or those ``where`` picks), each with its change stamp."""
        u = schema.usage
        query = select(*(u.c[name] for name in rows.USAGE_COLUMNS), u.c.changed)
        if where is not None:
            query = query.where(where)
        return {row[0]: (rows.reading(row[:-1], with_folders), row[-1]) for row in conn.execute(query)}

    def readings(self, with_folders: bool = True) -> dict[str, Reading]:
        with self._connect() as conn:
            self._require_schema(conn)
            return self._load(conn, None, with_folders)

    def reading(self, address: str) -> Reading | None:
        with self._connect() as conn:
            self._require_schema(conn)
            return self._load(conn, address).get(address)

    def save_readings(
        self, changed: Sequence[Reading], removed: Collection[str], flags: Mapping[str, bool] | None = None
    ) -> None:
        u = schema.usage
        with self._begin() as conn:
            self._require_schema(conn)
            self._publish_flags(conn, flags or {})
            self._publish_usage(conn, changed)
            if not changed and not removed:
                return
            stamp = self._next_stamp(conn)
            written = {r.address for r in changed}
            gone = sorted(set(removed) - written)
            for chunk in rows.batches(gone + sorted(written)):
                conn.execute(delete(u).where(u.c.address.in_(chunk)))
                self._unmark_removed(conn, "usage", chunk)
            for chunk in rows.batches(gone):
                conn.execute(insert(schema.removed), [{"kind": "usage", "address": a, "changed": stamp} for a in chunk])
            for batch in rows.batches(changed):
                conn.execute(insert(u), [self._usage_row(r, stamp) for r in batch])

    @staticmethod
    def _usage_row(r: Reading, changed: int) -> dict[str, Any]:
        return {**rows.usage_row(r), "changed": changed}

    def record_scan(self, summary: ScanSummary) -> None:
        """Add ``summary`` and drop all but the latest :attr:`scans_kept`, in one transaction."""
        t = schema.scan
        values = {k: getattr(summary, k) for k in (c.name for c in t.c) if k != "id"}
        with self._begin() as conn:
            conn.execute(insert(t).values(**values))
            newest = conn.execute(select(func.max(t.c.id))).scalar() or 0
            # two statements: MySQL refuses a DELETE whose subquery reads the same table
            conn.execute(delete(t).where(t.c.id <= newest - self.scans_kept))

    def last_scan(self) -> ScanSummary | None:
        with self._connect() as conn:
            self._require_schema(conn)
            return self._last_scan(conn)

    @staticmethod
    def _last_scan(conn: Connection) -> ScanSummary | None:
        t = schema.scan
        row = conn.execute(select(t).order_by(t.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        return ScanSummary(**{k: v for k, v in row._mapping.items() if k != "id"})

    # -- usage history -----------------------------------------------------------------------
    def record_history(self, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        with self._begin() as conn:
            self._require_schema(conn)
            for chunk in rows.batches(samples):
                conn.execute(
                    insert(schema.history),
                    [{"address": s.address, "at": s.at, "bytes": s.bytes, "messages": s.messages} for s in chunk],
                )

    def history(self, since: float, addresses: Collection[str] | None = None) -> dict[str, list[Sample]]:
        h = schema.history
        query = select(h.c.address, h.c.at, h.c.bytes, h.c.messages).where(h.c.at >= since)
        found: dict[str, list[Sample]] = {}
        with self._connect() as conn:
            self._require_schema(conn)
            if addresses is None:
                chunks: Iterator[Sequence[str] | None] = iter([None])
            else:
                chunks = iter(rows.batches(sorted(addresses)))
            for chunk in chunks:
                where = query if chunk is None else query.where(h.c.address.in_(chunk))
                for address, at, b, m in conn.execute(where.order_by(h.c.address, h.c.at, h.c.id)):
                    found.setdefault(address, []).append(Sample(address, at, b, m))
        return found

    def prune_history(self, now: float, retention: Retention) -> int:
        """Each tier reads only the rows still finer than it and old enough for it (an index)."""
        h = schema.history
        gone = 0
        with self._begin() as conn:
            self._require_schema(conn)
            cutoff = expiry(now, retention)
            for chunk in rows.batches(conn.execute(select(h.c.id).where(h.c.at < cutoff)).scalars().all()):
                gone += conn.execute(delete(h).where(h.c.id.in_(chunk))).rowcount
            for tier in tiers(now, retention):
                found = conn.execute(
                    select(h.c.id, h.c.address, h.c.at).where(h.c.resolution < tier.resolution, h.c.at < tier.before)
                )
                keep, drop = thin((Stored(*row) for row in found), tier.bucket)
                for chunk in rows.batches(keep):
                    conn.execute(update(h).where(h.c.id.in_(chunk)).values(resolution=tier.resolution))
                for chunk in rows.batches(drop):
                    gone += conn.execute(delete(h).where(h.c.id.in_(chunk))).rowcount
        return gone

    # -- the warnings ledger -----------------------------------------------------------------
    def sent_warnings(self) -> dict[str, set[str]]:
        w = schema.warning
        sent: dict[str, set[str]] = {}
        with self._connect() as conn:
            self._require_schema(conn)
            for address, notice in conn.execute(select(w.c.address, w.c.notice)):
                sent.setdefault(address, set()).add(notice)
        return sent

    def claim_warning(self, address: str, notice: str, at: float) -> bool:
        """One transaction per claim: the primary key decides between hosts claiming at once."""
        try:
            with self._begin() as conn:
                self._require_schema(conn)
                conn.execute(insert(schema.warning).values(address=address, notice=notice, sent_at=at))
        except IntegrityError:
            return False
        return True

    def release_warnings(self, address: str, notices: Collection[str]) -> None:
        w = schema.warning
        if not notices:
            return
        with self._begin() as conn:
            self._require_schema(conn)
            conn.execute(delete(w).where(w.c.address == address, w.c.notice.in_(sorted(notices))))


def from_config(config: StoreConfig) -> SqlStore:
    return SqlStore(config.url, mailbox_table(config.schema_, config.columns.overrides()))
