"""Where quotagate keeps the files that go beside its SQLite store."""

from __future__ import annotations

import pytest

from quotagate.config import parse_config, reservations_file, scan_lock_file


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/quotagate/q.db",
        "sqlite+pysqlite:////var/lib/quotagate/q.db",
        "sqlite:///file:/var/lib/quotagate/q.db?mode=rwc&uri=true",
    ],
)
def test_the_scan_lock_and_the_reservations_lie_beside_the_sqlite_file(url: str) -> None:
    """An SQLite store named in any of its forms. Expected: the scan lock and the daemon's
    reservations beside the file itself (the URI form put them under a relative "file:"
    directory of whatever directory a command ran in; the pysqlite form in /run)."""
    config = parse_config({"store": {"url": url}})
    assert str(scan_lock_file(config)) == "/var/lib/quotagate/q.db.scan-lock"
    assert str(reservations_file(config)) == "/var/lib/quotagate/q.db.reservations.json"
