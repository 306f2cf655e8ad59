"""Two real ``quotagate serve`` processes (two MX hosts) and one ``quotagate watch`` (the storage
host) sharing a private redis-server and one store: a burst split between the daemons lets in
exactly what fits, a delivery the watch sees changes both daemons' answers (their store refresh is
an hour away: only Redis can have told them), Redis killed makes both fail open, and once it is
back they are exact again. ``quotagate reservations --release`` on one MX lets go of the room every
MX holds in Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from quotagate.cli import main
from tests.policy.conftest import (
    BUSY,
    DOMAIN,
    DUNNO,
    QUOTA,
    REJECT,
    ROOMY,
    ROOMY_USED,
    Site,
    ask,
    make_site,
    wait_for,
)
from tests.policy.transactions import FITS, MESSAGE, end, rcpt
from tests.servers.daemon import PolicyDaemon
from tests.servers.process import free_port
from tests.servers.redis import RedisProcess, private_redis
from tests.spoolgen import add_message

pytestmark = [pytest.mark.servers, pytest.mark.slow]


@dataclass
class Hosts:
    site: Site
    redis: RedisProcess
    mx: list[PolicyDaemon]
    watch: PolicyDaemon

    def ports(self) -> list[int]:
        return [d.port for d in self.mx if d.port is not None]


def shared_toml(site: Site, redis: RedisProcess, node: str) -> str:
    return (
        f'[shared]\nurl = "{redis.url}"\nnode = "{node}"\nprefix = "{site.base.name}"\n'
        "retry_seconds = 0.2\ntimeout = 0.5\n"
        "[watch]\nflush_seconds = 0.1\n"
    )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    site = make_site(tmp_path)
    with private_redis() as redis:
        mx = []
        for n in (1, 2):
            port = free_port()
            config = site.base / f"mx{n}.toml"
            policy = site.toml(
                listen=[f"127.0.0.1:{port}"],
                control_socket=str(site.base / f"mx{n}.sock"),
                state_file=str(site.base / f"mx{n}.reservations.json"),
                refresh_seconds=3600,  # the store cannot be what tells them of a delivery
                max_usage_age=86400,
            )
            config.write_text(policy + shared_toml(site, redis, f"mx{n}"))
            mx.append(PolicyDaemon(config, port, site.base / f"mx{n}.log"))
        storage = site.base / "storage.toml"
        storage.write_text(site.toml() + shared_toml(site, redis, "storage"))
        watch = PolicyDaemon(storage, None, site.base / "watch.log", "watch", ready_log="shared state at")
        started: list[PolicyDaemon] = []
        try:
            for d in (*mx, watch):
                d.start()
                started.append(d)
            yield Hosts(site, redis, mx, watch)
        finally:
            for d in started:
                d.stop()


def burst(hosts: Hosts, first: int) -> dict[int, bytes]:
    """Ten checks at once, half through each MX; answers by transaction number."""
    ports = hosts.ports()
    numbers = range(first, first + 10)
    with ThreadPoolExecutor(10) as pool:
        answers = pool.map(lambda n: ask(ports[n % 2], rcpt(n)), numbers)
    return dict(zip(numbers, answers, strict=True))


def end_all(hosts: Hosts, answers: dict[int, bytes]) -> None:
    """The accepted transactions end without data, each told to the MX it went through."""
    for n, answer in answers.items():
        if answer == DUNNO:
            ask(hosts.ports()[n % 2], end(n))


def both(hosts: Hosts, n: int, size: int = MESSAGE) -> list[bytes]:
    """Transaction ``n`` through the first MX and ``n + 1`` through the second: two clients
    (one client's share of a mailbox, client_hold, counts across every MX)."""
    return [ask(port, rcpt(n + i, size)) for i, port in enumerate(hosts.ports())]


def end_on_both(hosts: Hosts, n: int) -> None:
    """The transactions :func:`both` started end without data."""
    for i, port in enumerate(hosts.ports()):
        ask(port, end(n + i))


def test_two_mx_hosts_one_redis_one_storage_host(hosts: Hosts) -> None:
    first = burst(hosts, 0)
    assert list(first.values()).count(DUNNO) == FITS, first
    end_all(hosts, first)
    wait_for(lambda: both(hosts, 50) == [DUNNO, DUNNO], what="the room let go on both")
    end_on_both(hosts, 50)

    # A delivery on the storage host fills the mailbox: both MX refuse, their store an hour away.
    folder = hosts.site.spool / DOMAIN / "roomy" / "Maildir"
    filler = add_message(folder, QUOTA - ROOMY_USED, where="new")
    wait_for(lambda: both(hosts, 60, 1) == [REJECT, REJECT], timeout=10, what="both MX to see the delivery")

    # Redis killed: both decide alone, from the store's usage (room) and their own reservations.
    hosts.redis.kill()
    assert both(hosts, 70, 1) == [DUNNO, DUNNO]
    assert all("unavailable" in d.log() for d in hosts.mx)

    # Back (empty): the storage host sends its readings again, the MX write back what they held.
    hosts.redis.start()
    wait_for(lambda: both(hosts, 80, 1) == [REJECT, REJECT], timeout=10, what="both MX exact again")
    assert all("in use: " in d.log() for d in hosts.mx)

    # The delivered message goes (read, deleted): room again, and a burst is exact again.
    os.unlink(filler)
    end_on_both(hosts, 70)  # the room held alone during the outage: those transactions end
    wait_for(lambda: both(hosts, 90, 1) == [DUNNO, DUNNO], timeout=10, what="both MX to see it gone")
    end_on_both(hosts, 90)
    again = burst(hosts, 100)
    assert list(again.values()).count(DUNNO) == FITS, again


def test_an_admin_release_on_one_mx_lets_go_of_the_room_every_mx_holds(
    hosts: Hosts, capsys: pytest.CaptureFixture[str]
) -> None:
    mx1 = ["--config", str(hosts.site.base / "mx1.toml"), "reservations"]
    capsys.readouterr()
    assert list(burst(hosts, 0).values()).count(DUNNO) == FITS
    assert both(hosts, 20) == [BUSY, BUSY]  # the room is held in Redis, for both MX

    # Listed from any MX: the room every MX holds, each row saying which MX took it.
    assert main([*mx1, ROOMY]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert len(listed) == FITS, listed
    assert {line.split()[-1] for line in listed} == {"mx1", "mx2"}
    assert all(line.startswith(ROOMY) and f" {MESSAGE} " in line for line in listed)
    assert main([*mx1]) == 0  # every mailbox: found by SCAN
    assert len(capsys.readouterr().out.splitlines()) == FITS + 1

    assert main([*mx1, "--release", ROOMY]) == 0
    assert capsys.readouterr().out == f"released 0 reservations here and {FITS} in the shared state\n"
    assert both(hosts, 30) == [DUNNO, DUNNO]  # at once, on both: nothing to wait for

    assert list(burst(hosts, 40).values()).count(DUNNO) == FITS - 2
    assert main([*mx1, "--all"]) == 0  # every mailbox's keys, found by SCAN
    assert capsys.readouterr().out == f"released 0 reservations here and {FITS} in the shared state\n"
    assert list(burst(hosts, 60).values()).count(DUNNO) == FITS

    # Redis away: mx1 lets go of the room it held alone, and says the shared room stays.
    hosts.redis.kill()
    assert both(hosts, 80, 1) == [DUNNO, DUNNO]
    assert main([*mx1, "--release", ROOMY]) == 0
    out, err = capsys.readouterr()
    assert out == "released 1 reservations here\n"
    assert "the shared state is unavailable" in err and "room held there stays" in err, err
    assert main([*mx1, ROOMY]) == 0
    assert capsys.readouterr().out == f"no room held for {ROOMY}\n"
