"""Two MX hosts and a storage host, each a network namespace of its own (tests/servers/netns.py):
each MX runs a real Exim with the generated policy ACL and its own ``quotagate serve``, both on
the MX's address; the storage host (the root namespace) runs ``quotagate watch`` on the spool and
a private redis-server bound to its bridge address, the only way the MX hosts share state. The
store is one SQLite file on the shared disk (as the spool is: Exim delivers into it).

A burst split between the MX hosts lets in exactly the messages that fit, the others deferred
(452) at RCPT; a delivery on the storage host makes both MX refuse (their store refresh is an
hour away: only Redis can have told them); Redis killed makes both accept, and deliver, alone;
once it is back both are exact again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, Site
from tests.servers.daemon import PolicyDaemon
from tests.servers.exim import Exim, untrust
from tests.servers.netns import Host, namespace_bed
from tests.servers.process import free_port
from tests.servers.redis import RedisProcess, private_redis
from tests.servers.smtp_clients import Clients
from tests.spoolgen import add_message

pytestmark = [pytest.mark.servers, pytest.mark.mta, pytest.mark.slow]

MESSAGE = 100_000
QUOTA = 450_000  # room for 4.5 of them
ROOMY = f"roomy@{DOMAIN}"
FULL_REPLY = 552
BUSY_REPLY = 452


@dataclass
class MX:
    host: Host
    exim: Exim
    daemon: PolicyDaemon


@dataclass
class Bed:
    site: Site
    redis: RedisProcess
    mx: list[MX]

    def new(self) -> list[Path]:
        folder = self.site.maildir("roomy") / "new"
        return sorted(folder.iterdir()) if folder.exists() else []


def common_toml(work: Path, spool: Path, redis: RedisProcess, node: str) -> str:
    return (
        f'[store]\nurl = "sqlite:///{work}/db/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[scan]\nlock_file = "{work}/scan.lock"\n'
        f'[shared]\nurl = "{redis.url}"\nnode = "{node}"\nprefix = "{work.name}"\n'
        "retry_seconds = 0.2\ntimeout = 0.5\n"
    )


@pytest.fixture
def bed(work: Path) -> Iterator[Bed]:
    spool = work / "mail"
    spool.mkdir()
    (work / "db").mkdir()
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(namespace_bed("mx1", "mx2"))
        redis = stack.enter_context(private_redis(host=net.storage))
        storage = work / "storage.toml"
        storage.write_text(common_toml(work, spool, redis, "storage") + "[watch]\nflush_seconds = 0.1\n")
        site = Site(work, spool, storage)
        assert site.quotagate("mailbox", "add", ROOMY, "--quota", str(QUOTA)) == 0
        site.fill("roomy", 10)
        assert site.quotagate("scan") == 0
        watch = PolicyDaemon(storage, None, work / "watch.log", "watch", ready_log="shared state at")
        watch.start()
        stack.callback(watch.stop)
        mx = []
        for name, host in net.hosts.items():
            port = free_port()
            config = work / f"{name}.toml"
            config.write_text(
                common_toml(work, spool, redis, name) + f'[policy]\nlisten = ["{host.address}:{port}"]\nmetrics = ""\n'
                f'control_socket = "{work}/{name}.sock"\nstate_file = "{work}/{name}.reservations.json"\n'
                # The store cannot be what tells them of a delivery: only Redis can.
                "refresh_seconds = 3600\nmax_usage_age = 86400\n"
            )
            daemon = PolicyDaemon(config, port, work / f"{name}.log", host=host.address, launcher=host.launcher)
            daemon.start()
            stack.callback(daemon.stop)
            exim = Exim(work / f"exim-{name}", free_port(), spool, address=host.address, launcher=host.launcher)
            stack.callback(untrust, exim.config)
            parts = exim_config.parts(load_config(config), "policy")
            exim.configure(users={ROOMY: f"{DOMAIN}/roomy"}, main=parts.main, acls=parts.acls, acl=parts.acl)
            exim.start()
            stack.callback(exim.stop)
            mx.append(MX(host, exim, daemon))
        yield Bed(site, redis, mx)


def send(bed: Bed, per_mx: int, size: int, first: int, deliver: bool = True) -> tuple[list[int], list[int]]:
    """``per_mx`` clients on each MX host, each from its own address, all RCPTs before any DATA;
    the RCPT codes and the DATA codes (0: none sent), MX by MX. ``deliver``: DATA from those let
    in, else QUIT (their room goes)."""
    clients = []
    try:
        for i, mx in enumerate(bed.mx):
            sources = [f"127.0.0.{first + i * per_mx + n}" for n in range(per_mx)]
            clients.append(Clients(mx.host.launcher, mx.host.address, mx.exim.port, ROOMY, size, sources))
        rcpts = [code for c in clients for code in c.rcpt()]
        datas = [code for c in clients for code in c.finish(deliver)]
        return rcpts, datas
    finally:
        for c in clients:
            c.close()


def probe(bed: Bed, first: int, size: int = 1000) -> list[int]:
    """One message's RCPT on each MX, then QUIT."""
    return send(bed, 1, size, first, deliver=False)[0]


def wait_for(bed: Bed, check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        logs = [mx.daemon.log()[-2000:] for mx in bed.mx]
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {logs}"
        time.sleep(0.2)


def burst(bed: Bed, first: int) -> None:
    """Ten clients of 100 kB, half through each MX, into room for 4.5: exactly four let in, the
    others deferred at RCPT, and the four delivered."""
    before = len(bed.new())
    rcpts, datas = send(bed, 5, MESSAGE, first)
    assert sorted(rcpts) == [250] * 4 + [BUSY_REPLY] * 6, (rcpts, [mx.daemon.log()[-3000:] for mx in bed.mx])
    assert sorted(datas) == [0] * 6 + [250] * 4
    assert len(bed.new()) == before + 4
    assert [mx.exim.queue_count() for mx in bed.mx] == [0, 0]


def test_two_mx_hosts_share_the_room_see_storage_deliveries_and_fail_open(bed: Bed) -> None:
    burst(bed, 10)
    assert sum(f.stat().st_size for f in bed.new()) + 10 <= QUOTA

    # A delivery on the storage host fills the mailbox: both MX refuse.
    add_message(bed.site.maildir("roomy"), QUOTA, where="new")
    wait_for(bed, lambda: probe(bed, 100) == [FULL_REPLY, FULL_REPLY], "both MX to see the delivery")

    # Redis killed: each MX decides alone and accepts; the mail is delivered, none left queued.
    bed.redis.kill()
    rcpts, datas = send(bed, 1, 1000, 110)
    assert rcpts == [250, 250] and datas == [250, 250]
    assert len(bed.new()) == 4 + 1 + 2
    assert [mx.exim.queue_count() for mx in bed.mx] == [0, 0]
    assert all("unavailable" in mx.daemon.log() for mx in bed.mx)

    # Back: the storage host sends its readings again, both refuse again.
    bed.redis.start()
    wait_for(bed, lambda: probe(bed, 120) == [FULL_REPLY, FULL_REPLY], "both MX to refuse again")


def test_after_redis_returns_a_burst_is_exact_again(bed: Bed) -> None:
    burst(bed, 10)
    bed.redis.kill()
    bed.redis.start()
    for message in bed.new():
        message.unlink()  # read and deleted: room for 4.5 again
    # Both at once, each half of the room: a phantom hold of delivered mail would leave no room.
    wait_for(bed, lambda: probe(bed, 130, (QUOTA - 10) // 2) == [250, 250], "both MX to see all the room")
    burst(bed, 140)
