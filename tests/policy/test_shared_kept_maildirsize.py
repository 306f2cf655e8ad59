"""A maildirsize value kept between checks on a file system whose changes raise no inotify event
here (NFS: the README says the value is then kept up to refresh_seconds), weighed against the
shared ledger."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from msgspec.structs import replace

from quotagate.config import parse_config
from quotagate.policy.reservations import Reservations
from quotagate.policy.shared import RedisLedger
from tests.policy.conftest import (
    BUSY,
    DOMAIN,
    DUNNO,
    QUOTA,
    REJECT,
    ROOMY,
    ROOMY_USED,
    ask,
    make_site,
    request,
    run,
    wait_until,
)
from tests.policy.test_shared import redis
from tests.policy.transactions import FITS, MESSAGE, rcpt
from tests.servers.daemon import PolicyDaemon
from tests.servers.install import unavailable
from tests.servers.process import free_port
from tests.servers.redis import RedisProcess

__all__ = ["redis"]  # the fixture: a private redis-server for the module

pytestmark = pytest.mark.servers


def test_a_kept_maildirsize_never_releases_the_room_of_a_delivery_it_does_not_include(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: an MX host reads the spool over a network file system, where a change made
    by another client raises no inotify event here (simulated: the daemon runs in a mount
    namespace with its spool an overlay whose lower directory the "storage host" writes to
    directly; the daemon counts overlayfs, like NFS, as not local), `[spool] accounting = "exim"`
    (maildirsize trusted), `[shared] url` with the storage host's watch. `roomy` has 1,000
    bytes used: room for 4 messages of 2,000. A message is accepted (in flight). It lands: the
    delivery agent appends it to maildirsize, and the storage host's watch tells Redis of the
    delivery and of its new reading (3,000 bytes).
    Expected: three more messages fit, the fourth is turned away (3,000 + 3 x 2,000 held).
    (The daemon answered from the value it read before the delivery, kept up to
    refresh_seconds, but sent it to the ledger as measured now: it beat the storage host's
    reading and, "newer" than the delivery, let go of that message's room in flight, which was
    then counted nowhere: four more were let in, one more than fits.)"""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        unavailable("cannot make a mount namespace here (unshare -m)")
    site = dataclasses.replace(make_site(tmp_path), accounting="exim")
    spool = site.spool
    size_file = spool / DOMAIN / "roomy" / "Maildir" / "maildirsize"
    size_file.write_text(f"{QUOTA}S\n{ROOMY_USED} 1\n")
    site.rescan()
    reading = site.reading(ROOMY)
    assert reading.usage.maildirsize is not None
    prefix = site.base.name
    port = free_port()
    toml = site.toml(listen=[f"127.0.0.1:{port}"], state_file=str(site.base / "reservations.json"))
    toml += f'[shared]\nurl = "{redis.url}"\nprefix = "{prefix}"\n'
    config_file = site.base / "quotagate.toml"
    config_file.write_text(toml)
    copy = site.base / "spool-copy"
    shutil.copytree(spool, copy, symlinks=True)
    (site.base / "upper").mkdir()
    (site.base / "work").mkdir()
    options = f"lowerdir={copy},upperdir={site.base / 'upper'},workdir={site.base / 'work'}"
    script = 'mount -t overlay overlay -o "$1" "$0" && shift && exec "$@"'
    launcher = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(spool), options]
    daemon = PolicyDaemon(config_file, port, site.base / "serve.log", launcher=launcher)
    daemon.start()
    try:
        assert daemon.proc is not None
        answers = [ask(port, rcpt(0))]
        eom = request(ROOMY, MESSAGE, "END-OF-MESSAGE", client="192.0.2.1", instance="tx0")
        answers.append(ask(port, eom[:-1] + b"recipient_count=1\n\n"))
        time.sleep(0.3)  # the end reaches Redis after the answer
        # The message lands on the storage host, another client of the file system: the MX sees
        # the new content through its mount, but no inotify event.
        with open(copy / size_file.relative_to(spool), "a") as f:
            f.write(f"{MESSAGE} 1\n")
        config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": prefix}})

        async def storage_host() -> None:
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                storage.delivered(ROOMY)
                await wait_until(lambda: storage.settled)
                landed = replace(reading, bytes=ROOMY_USED + MESSAGE, messages=2, measured_at=storage.clock())
                storage.readings([landed])
                await wait_until(lambda: storage.settled)
            finally:
                await storage.close()

        run(storage_host())
        answers += [ask(port, rcpt(n)) for n in range(1, FITS + 1)]
    finally:
        daemon.stop()
    assert answers[:2] == [DUNNO, DUNNO]
    assert answers[2:5] == [DUNNO] * 3, answers[2:]
    assert answers[5] in (BUSY, REJECT), (
        f"a fourth message let in with 3,000 of 10,000 bytes used and 6,000 held: {answers[2:]}"
    )
