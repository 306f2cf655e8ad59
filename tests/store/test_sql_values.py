"""SQL store: limits and flags as other admins' tables spell them, at the edges."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, Numeric, SmallInteger, String, Table, create_engine

from quotagate.model import Limits, Mailbox
from quotagate.policy.live import SnapshotLoader
from quotagate.store.presets import mailbox_table
from quotagate.store.sql import SqlStore, _flag


def _classic(url: str, rows: list[dict[str, object]], quota: Any = None) -> Table:
    """The classic table at ``url`` as an admin may have typed it (``quota``: the quota column's
    type, text by default; ``text_quota`` beside it), holding ``rows``."""
    table = Table(
        "mailbox",
        MetaData(),
        Column("username", String(64), primary_key=True),
        Column("domainname", String(255), primary_key=True),
        Column("quota", String(40) if quota is None else quota),
        Column("text_quota", String(20)),
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
    return table


def test_one_quota_past_what_a_store_keeps_does_not_stop_the_daemon_for_everyone(tmp_path: Path) -> None:
    """Scenario: an admin's table keeps its quota as text or a float; one row says ``1e30`` (an
    admin's way of writing "huge"), the other rows are ordinary.
    Expected: as README says for a value quotagate cannot use, that row is named and taken as
    unlimited (or capped at 2^63-1, what every store and the daemon's columns hold), and the
    daemon loads the rest of the table.
    Before the fix: int(1e30 * unit) went into the daemon's snapshot (an array('q') column),
    which raised OverflowError: the daemon loaded no mailbox at all, at every refresh."""
    url = f"sqlite:///{tmp_path}/admin.db"
    _classic(
        url,
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
    url = f"sqlite:///{tmp_path}/admin.db"
    _classic(
        url,
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


def test_limits_and_flags_as_other_tables_spell_them(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Scenario: an admin's classic table keeps its quota in gigabytes as a DECIMAL (0.5 is half
    a gigabyte; ``quota_unit = "1G"``), its enabled column as CHAR(1) holding Y or N, and one row
    a quota written as text ("500M") and an enabled value no table means anything by ("?").
    Expected: 0.5G is 512M and 1.5G 1536M, Y/N enabled and disabled; the two values quotagate
    cannot read are named in one warning (once a process: the daemon reads the table at every
    refresh), their mailbox taken as unlimited and enabled, and every other row is read. (Before,
    0.5 was truncated to 0, unlimited, and 1.5 to 1G; Y, N and "500M" stopped every scan with a
    traceback.)"""
    rows: list[dict[str, object]] = [
        {"username": "half", "domainname": "example.org", "quota": Decimal("0.5"), "text_quota": None, "enabled": "Y"},
        {"username": "more", "domainname": "example.org", "quota": Decimal("1.5"), "text_quota": None, "enabled": "N"},
        {"username": "odd", "domainname": "example.org", "quota": None, "text_quota": "500M", "enabled": "?"},
    ]
    _classic(db_url, rows, Numeric(6, 2))
    in_gigabytes = SqlStore(db_url, mailbox_table("classic", {"quota_unit": 1 << 30}))
    as_text = SqlStore(db_url, mailbox_table("classic", {"quota": "text_quota"}))
    try:
        in_gigabytes.migrate()
        with caplog.at_level("WARNING", logger="quotagate.store.sql"):
            boxes = {m.address: m for m in in_gigabytes.mailboxes()}
            texts = {m.address: m for m in as_text.mailboxes()}
            as_text.mailboxes()
        assert boxes["half@example.org"] == Mailbox("half@example.org", Limits(512 << 20), True)
        assert boxes["more@example.org"] == Mailbox("more@example.org", Limits(1536 << 20), False)
        assert boxes["odd@example.org"] == Mailbox("odd@example.org", Limits(), True)
        assert texts["odd@example.org"].limits == Limits()
    finally:
        in_gigabytes.close()
        as_text.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said  # each store once, the second listing said nothing
    assert "odd@example.org: enabled '?', taken as enabled" in said[0]
    assert "odd@example.org: text_quota '500M', taken as unlimited" in said[1]
