"""A maildirsize value kept between requests on a local file system (watched: no event, no
change) is current whenever it is used, however long ago it was read."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.policy.conftest import DOMAIN, FULL, QUOTA, REJECT, ask, make_site, request
from tests.servers.daemon import PolicyDaemon
from tests.servers.process import free_port

pytestmark = pytest.mark.servers


def test_a_watched_unchanged_maildirsize_does_not_go_stale(tmp_path: Path) -> None:
    """Scenario: ``[spool] accounting = "exim"`` (maildirsize trusted), full@ over its quota by
    its maildirsize, on a local (ext4) file system, so the daemon keeps the value read with an
    inotify watch until the file changes (policy/files.py: "kept until such an event");
    ``max_usage_age = 2``. A request for full@ is refused; nothing changes for 3 s (a full
    mailbox gets no deliveries); another request comes.
    Expected: refused again: the value is known current (watched, unchanged). (Taken as old as
    its read, the kept value, never read again, passed max_usage_age and the daemon answered
    DUNNO for the full mailbox: a quiet full mailbox let mail in every max_usage_age.)"""
    site = replace(make_site(tmp_path), accounting="exim")
    size_file = site.spool / DOMAIN / "full" / "Maildir" / "maildirsize"
    size_file.write_text(f"{QUOTA}S\n{QUOTA + 1} 1\n")
    site.rescan()
    port = free_port()
    toml = site.toml(listen=[f"127.0.0.1:{port}"], max_usage_age=2, state_file=str(site.base / "r.json"))
    config_file = site.base / "quotagate.toml"
    config_file.write_text(toml)
    daemon = PolicyDaemon(config_file, port, site.base / "serve.log")
    daemon.start()
    try:
        first = ask(port, request(FULL, 100))
        time.sleep(3)
        second = ask(port, request(FULL, 100))
    finally:
        daemon.stop()
    assert (first, second) == (REJECT, REJECT), daemon.log()[-1500:]
