"""open_store: one way to open a store, migrate quotagate's own SQLite file, and close it."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.model import Limits, Mailbox
from quotagate.store import StoreError, open_store
from tests.descriptors import held
from tests.store.backends import store_config


def test_migrate_sets_up_quotagates_own_sqlite_file(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/q.db", migrate=True) as store:
        store.upsert_mailboxes([Mailbox("a@example.org", Limits(10))])
        assert store.migration_sql() == []


def test_without_migrate_a_new_file_is_left_unset(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/q.db") as store, pytest.raises(StoreError, match="db migrate"):
        store.mailboxes()


def test_migrate_never_touches_an_admin_schema(tmp_path: Path) -> None:
    """The admin's tables change only through 'quotagate db migrate', never on first use."""
    config = store_config({"url": f"sqlite:///{tmp_path}/admin.db", "schema": "postfixadmin"})
    with pytest.raises(StoreError, match="not set up"), open_store(config, migrate=True) as store:
        store.mailboxes()  # would be set up by now if open_store had migrated


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"], ids=["sqlite3", "sqlalchemy"])
def test_leaving_the_block_closes_the_store_even_on_error(tmp_path: Path, scheme: str) -> None:
    db = tmp_path / "q.db"
    with pytest.raises(RuntimeError), open_store(f"{scheme}:///{db}", migrate=True) as store:
        store.mailboxes()
        assert held(db) == 1
        raise RuntimeError("a command fails half-way")
    assert held(db) == 0
