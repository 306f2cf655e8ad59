"""Two MX hosts and a storage host, each a network namespace of its own (tests/servers/netns.py):
each MX runs a real Exim with the generated policy ACL and its own ``quotagate serve``, both on
the MX's address; the storage host runs ``quotagate watch`` on the spool (a disk they all share:
Exim delivers into it). What the three hosts share over the network: a private PostgreSQL, the
store of all three, and a private redis-server, both bound to the bed's bridge address (another
host, as far as each namespace can tell). Redis is the only way the MX hosts learn of each
other's room and of a delivery before their store refresh, an hour away.

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
from tests.servers.netns import Bed as Network
from tests.servers.netns import Host, namespace_bed
from tests.servers.postgres import Postgres, private_postgres
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


def common_toml(work: Path, store: str, spool: Path, redis: RedisProcess, node: str) -> str:
    return (
        f'[store]\nurl = "{store}"\n[spool]\nroot = "{spool}"\n'
        f'[scan]\nlock_file = "{work}/scan.lock"\n'
        f'[shared]\nurl = "{redis.url}"\nnode = "{node}"\nprefix = "{work.name}"\n'
        "retry_seconds = 0.2\ntimeout = 0.5\n"
    )


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[Network, Postgres]]:
    """The hosts, and the PostgreSQL they share: for every test of the module (its cluster
    takes seconds to make); each test has a database of its own."""
    with namespace_bed("mx1", "mx2", "storage") as net, private_postgres(net.bridge, net.network) as postgres:
        yield net, postgres


@pytest.fixture
def bed(work: Path, network: tuple[Network, Postgres]) -> Iterator[Bed]:
    net, postgres = network
    spool = work / "mail"
    spool.mkdir()
    store = postgres.create_database(work.name)
    storage_host = net.hosts["storage"]
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(private_redis(host=net.bridge))
        storage = work / "storage.toml"
        storage.write_text(common_toml(work, store, spool, redis, "storage") + "[watch]\nflush_seconds = 0.1\n")
        site = Site(work, spool, storage)
        assert site.quotagate("db", "migrate") == 0
        assert site.quotagate("mailbox", "add", ROOMY, "--quota", str(QUOTA)) == 0
        site.fill("roomy", 10)
        assert site.quotagate("scan") == 0
        watch = PolicyDaemon(
            storage, None, work / "watch.log", "watch", ready_log="shared state at", launcher=storage_host.launcher
        )
        watch.start()
        stack.callback(watch.stop)
        mx = []
        for name in ("mx1", "mx2"):
            host, port = net.hosts[name], free_port()
            config = work / f"{name}.toml"
            config.write_text(
                common_toml(work, store, spool, redis, name)
                + f'[policy]\nlisten = ["{host.address}:{port}"]\nmetrics = ""\n'
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
            exim.configure(users={ROOMY: f"{DOMAIN}/roomy"}, main=parts.main, acls=parts.acls, verified_acl=parts.acl)
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
    # Once in CI, under load, one of the four let in got 452 at DATA: the logs say why next time.
    assert sorted(datas) == [0] * 6 + [250] * 4, (datas, [(mx.daemon.log(), mx.exim.log("main")) for mx in bed.mx])
    assert len(bed.new()) == before + 4
    assert [mx.exim.queue_count() for mx in bed.mx] == [0, 0]


def test_two_mx_hosts_share_the_room_see_storage_deliveries_and_fail_open(bed: Bed) -> None:
    # Every host reaches the store over the bed's network.
    assert all("serving 1 mailboxes of postgresql+psycopg://" in mx.daemon.log() for mx in bed.mx)
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
