"""SQL store: limits and flags as other admins' tables spell them, at the edges."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, SmallInteger, String, Table, create_engine

from quotagate.policy.live import SnapshotLoader
from quotagate.store.presets import mailbox_table
from quotagate.store.sql import SqlStore, _flag


def _classic(tmp_path: Path, rows: list[dict[str, object]]) -> str:
    url = f"sqlite:///{tmp_path}/admin.db"
    table = Table(
        "mailbox",
        MetaData(),
        Column("username", String(64), primary_key=True),
        Column("domainname", String(255), primary_key=True),
        Column("quota", String(40)),
        Column("enabled", String(1)),
        Column("overquota", SmallInteger, nullable=False, default=0),
    )
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return url


def test_one_quota_past_what_a_store_keeps_does_not_stop_the_daemon_for_everyone(tmp_path: Path) -> None:
    """Scenario: an admin's table keeps its quota as text or a float; one row says ``1e30`` (an
    admin's way of writing "huge"), the other rows are ordinary.
    Expected: as README says for a value quotagate cannot use, that row is named and taken as
    unlimited (or capped at 2^63-1, what every store and the daemon's columns hold), and the
    daemon loads the rest of the table.
    Before the fix: int(1e30 * unit) went into the daemon's snapshot (an array('q') column),
    which raised OverflowError: the daemon loaded no mailbox at all, at every refresh."""
    url = _classic(
        tmp_path,
        [
            {"username": "big", "domainname": "example.org", "quota": "1e30", "enabled": "Y"},
            {"username": "ok", "domainname": "example.org", "quota": "1000", "enabled": "Y"},
        ],
    )
    store = SqlStore(url, mailbox_table("classic", {}))
    try:
        store.migrate()
        snapshot = SnapshotLoader().load(store)
        assert snapshot.mailboxes["ok@example.org"].limits.bytes == 1000
        assert snapshot.mailboxes["big@example.org"].limits.bytes <= 2**63 - 1
    finally:
        store.close()


@pytest.mark.parametrize("blank", ["", " "])
def test_an_empty_enabled_value_does_not_silently_disable_the_mailbox(
    tmp_path: Path, blank: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario: a CHAR(1) enabled column (Y/N) where one row holds '' or ' ' (MySQL pads and
    strips CHAR, a NOT NULL DEFAULT '' column, a row inserted by another tool).
    Expected: README: the enabled column is "a boolean, a number (0 is off) or Y/N, t/f,
    yes/no, on/off (NULL is on). A value of neither ... is named in a warning ... and taken as
    ... enabled" - as '?' is, as NULL is, and as an empty cell is in ``mailbox import``.
    Before the fix: empty read as 0, off: the mailbox was disabled without a word, never
    checked and never published over quota."""
    url = _classic(
        tmp_path,
        [{"username": "blank", "domainname": "example.org", "quota": "1000", "enabled": blank}],
    )
    store = SqlStore(url, mailbox_table("classic", {}))
    try:
        store.migrate()
        with caplog.at_level("WARNING", logger="quotagate.store.sql"):
            (mailbox,) = store.mailboxes()
    finally:
        store.close()
    said = [r.getMessage() for r in caplog.records]
    assert mailbox.enabled or said, f"{blank!r} disabled the mailbox without a warning"
    assert mailbox.enabled, f"{blank!r} in the enabled column disabled the mailbox ({said})"


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        (b"\x00", False),
        (b"\x01", True),
        (b"0", False),
        (b"1", True),
        ("", True),
        (None, True),
        ("N", False),
        ("?", None),
    ],
)
def test_enabled_values_as_drivers_give_them(value: object, enabled: bool | None) -> None:
    """MySQL's BIT(1) comes as bytes, a VARBINARY of digits too; empty and NULL are on; a value
    of neither is None (named in a warning, taken as on)."""
    assert _flag(value) is enabled
