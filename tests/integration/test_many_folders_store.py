"""A mailbox with many folders, stored in MariaDB."""

from __future__ import annotations

import uuid

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.servers.mariadb import MariaDB
from tests.spoolgen import add_message, maildir_folder

pytestmark = pytest.mark.servers


def test_a_mailbox_with_seven_hundred_folders_does_not_stop_the_scan_for_everybody(env: Env, mariadb: MariaDB) -> None:
    """Scenario: quotagate's tables in MariaDB (``[store] url = "mysql+pymysql://..."``, created
    by ``quotagate db migrate``). alice keeps a Maildir++ archive of 700 folders (one per
    customer and year, ``.Archive.2019.customer-0001`` and so on, as IMAP clients and
    imapsync make them), one small message each; bob, over his limit, holds 5,000 bytes in
    INBOX. alice's per-folder usage with its stamps is a JSON text of about 80 kB for the
    ``folders`` column, which quotagate creates as ``TEXT``: 65,535 bytes at most in MariaDB
    (some 600 folders with their stamps; fewer with longer names).

    Expected: the scan stores every reading (alice's folders in full, or alice alone unknown)
    and bob is over quota and published; one user's folder tree never makes the scan fail for
    every mailbox. Today the write of all readings fails (MariaDB: "Data too long for column
    'folders'"), nothing is stored, and bob's state is never recorded."""
    url = mariadb.create_database(f"qg_{uuid.uuid4().hex[:12]}")
    env.configure(store={"url": str(url)}, scan={"racy_seconds": 0})  # stamps kept, as a scan later keeps them
    alice = env.maildir("alice")
    add_message(maildir_folder(alice), 100)
    for i in range(700):
        add_message(maildir_folder(alice, f"Archive.{2015 + i % 10}.customer-{i:04d}"), 100)
    add_message(maildir_folder(env.maildir("bob")), 5000)
    env.add("alice", Limits(10**9, 0))
    bob = env.add("bob", Limits(4000, 0))

    try:
        env.scan()
    finally:
        stored = env.store.readings()
    assert bob in stored and stored[bob].state is State.OVER
