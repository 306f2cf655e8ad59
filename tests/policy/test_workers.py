"""``quotagate serve --workers 2``: two real worker processes on the same sockets, sharing their
reservations through a private redis-server, supervised: a burst lets in exactly what fits
whichever worker each check reaches, a worker killed (or stuck) is started again while the other
answers, the metrics add up, SIGTERM stops everything and leaves no socket behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from quotagate.policy.shared import mailbox_keys
from quotagate.policy.workers import STUCK_SECONDS
from tests.policy.conftest import (
    DOMAIN,
    DUNNO,
    QUOTA,
    REJECT,
    ROOMY,
    ROOMY_USED,
    Site,
    ask,
    make_site,
    read_answer,
    request,
    scrape,
    wait_for,
)
from tests.policy.transactions import FITS, end, rcpt
from tests.servers.daemon import QUOTAGATE, PolicyDaemon
from tests.servers.process import free_port
from tests.servers.redis import private_redis
from tests.spoolgen import add_message


@dataclass
class Fleet:
    site: Site
    daemon: PolicyDaemon
    port: int
    metrics: int
    unix: Path
    redis_url: str

    def held_in_redis(self, mailbox: str) -> int:
        """Bytes the fleet holds in ``mailbox`` as Redis has them (a transaction's end reaches it
        after the answer, in the worker's next pipeline)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.hget(mailbox_keys(self.site.base.name, mailbox)[1], "b") or 0)
        finally:
            client.close()

    def workers(self) -> list[int]:
        assert self.daemon.proc is not None
        found = subprocess.run(["pgrep", "-P", str(self.daemon.proc.pid)], capture_output=True, text=True)
        return sorted(int(pid) for pid in found.stdout.split())

    def worker(self, index: int) -> int:
        """The pid of worker ``index`` (its role is on its command line)."""
        for pid in self.workers():
            if f'"index": {index},' in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return pid
        raise AssertionError(f"no worker {index} among {self.workers()}")

    def ready(self) -> int:
        """How many times a worker said it serves (one line each, at every start)."""
        return self.daemon.log().count(": serving ")

    def wait_for_start(self, after: int, timeout: float = 20) -> None:
        wait_for(lambda: self.ready() > after, timeout=timeout, what="a worker started again")


def burst(port: int, first: int) -> dict[int, bytes]:
    """Ten checks at once, each on a connection of its own (Exim's way): either worker answers."""
    numbers = range(first, first + 10)
    with ThreadPoolExecutor(10) as pool:
        return dict(zip(numbers, pool.map(lambda n: ask(port, rcpt(n)), numbers), strict=True))


@contextlib.contextmanager
def started_fleet(tmp_path: Path, short_tmp: Path, more: str = "", **policy: Any) -> Iterator[Fleet]:
    """``serve --workers 2`` over a site of its own, sharing through a private redis-server."""
    site = make_site(tmp_path)
    port, metrics = free_port(), free_port()
    unix = short_tmp / "policy.sock"
    with private_redis() as redis:
        config = site.base / "quotagate.toml"
        toml = site.toml(
            listen=[f"127.0.0.1:{port}", f"unix:{unix}"],
            metrics=f"127.0.0.1:{metrics}",
            state_file=str(site.base / "reservations.json"),
            **policy,
        )
        toml += f'[shared]\nurl = "{redis.url}"\nprefix = "{site.base.name}"\nretry_seconds = 0.2\n' + more
        config.write_text(toml)
        daemon = PolicyDaemon(config, port, site.base / "serve.log", "serve --workers 2")
        daemon.start()
        try:
            daemon.wait_for_log("2 workers answering", seconds=20)
            yield Fleet(site, daemon, port, metrics, unix, redis.url)
        finally:
            daemon.stop()


@pytest.fixture
def fleet(tmp_path: Path, short_tmp: Path) -> Iterator[Fleet]:
    with started_fleet(tmp_path, short_tmp) as started:
        yield started


@pytest.mark.servers
@pytest.mark.slow
def test_workers_share_reservations_and_one_killed_is_started_again(fleet: Fleet) -> None:
    first = burst(fleet.port, 0)
    assert list(first.values()).count(DUNNO) == FITS, first
    # Ends reach whichever worker: the room is let go all the same.
    assert fleet.held_in_redis(ROOMY) > 0
    for n, answer in first.items():
        if answer == DUNNO:
            ask(fleet.port, end(n))
    wait_for(lambda: fleet.held_in_redis(ROOMY) == 0, timeout=10, what="the ends applied in Redis")
    again = burst(fleet.port, 100)
    assert list(again.values()).count(DUNNO) == FITS, again
    with socket.socket(socket.AF_UNIX) as unix:  # the unix socket is served too
        unix.connect(str(fleet.unix))
        unix.sendall(request(ROOMY, 1, instance="unix"))
        assert read_answer(unix) == DUNNO

    # The metrics are the workers' added up (each leaves its own every second).
    def counted() -> float:
        samples = scrape(fleet.metrics)
        return sum(v for k, v in samples.items() if k.startswith("quotagate_policy_requests_total"))

    answered = 20 + FITS + 1
    wait_for(lambda: counted() == answered, timeout=10, what=f"{answered} requests counted across the workers")

    # Each worker killed in turn: the other answers meanwhile, and the supervisor starts it again.
    for victim in fleet.workers():
        starts = fleet.ready()
        os.kill(victim, signal.SIGKILL)
        assert ask(fleet.port, request(ROOMY, 1, instance="after-kill")) == DUNNO
        fleet.wait_for_start(after=starts)
        assert victim not in fleet.workers()
    assert len(fleet.workers()) == 2
    assert "was killed by SIGKILL: starting it again" in fleet.daemon.log()
    samples = scrape(fleet.metrics)
    assert samples["quotagate_policy_workers"] == 2
    assert samples['quotagate_policy_worker_restarts_total{cause="died"}'] == 2
    assert counted() >= answered  # what the killed workers counted is kept

    workers = fleet.workers()
    assert fleet.daemon.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not fleet.unix.exists()


@pytest.mark.servers
@pytest.mark.slow
def test_a_worker_whose_loop_is_stuck_is_killed_and_started_again(fleet: Fleet) -> None:
    stuck = fleet.workers()[0]
    starts = fleet.ready()
    os.kill(stuck, signal.SIGSTOP)  # as a loop blocked in a call that never returns
    try:
        assert ask(fleet.port, request(ROOMY, 1)) == DUNNO  # the other one answers
        fleet.wait_for_start(after=starts, timeout=STUCK_SECONDS + 20)
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed, as it should be
            os.kill(stuck, signal.SIGCONT)
    assert "sent no heartbeat" in fleet.daemon.log()
    assert stuck not in fleet.workers()


@pytest.mark.servers
@pytest.mark.slow
def test_a_delivery_the_first_worker_sees_changes_every_workers_answer(tmp_path: Path, short_tmp: Path) -> None:
    """[watch] enabled: only the first worker follows the spool; the other weighs its readings
    through Redis (the store's refresh, an hour away, cannot be what tells it)."""
    more = "[watch]\nenabled = true\nflush_seconds = 0.1\n"
    with started_fleet(tmp_path, short_tmp, more, refresh_seconds=3600, max_usage_age=86400) as fleet:
        assert {ask(fleet.port, request(ROOMY, 1, instance=f"a{n}")) for n in range(10)} == {DUNNO}
        add_message(fleet.site.spool / DOMAIN / "roomy" / "Maildir", QUOTA - ROOMY_USED, where="new")

        def every_one_refuses() -> bool:
            return {ask(fleet.port, request(ROOMY, 1, instance=f"b{n}")) for n in range(10)} == {REJECT}

        wait_for(lambda: ask(fleet.port, request(ROOMY, 1, instance="c")) == REJECT, timeout=10, what="the delivery")
        watching = fleet.worker(0)
        os.kill(watching, signal.SIGSTOP)  # from now on the second worker answers every request
        try:
            # The refusal above may be the first worker's own: the reading reaches the second
            # through Redis a moment later (a loaded CI machine took longer than one pass).
            wait_for(every_one_refuses, timeout=10, what="the second worker to weigh the delivery")
        finally:
            os.kill(watching, signal.SIGCONT)
        assert fleet.daemon.log().count("usage live from the spool") == 1  # the first worker only


def test_more_than_one_worker_needs_shared_state(site: Site) -> None:
    config = site.base / "quotagate.toml"
    config.write_text(site.toml(listen=[f"127.0.0.1:{free_port()}"]))
    done = subprocess.run(
        [QUOTAGATE, "--config", str(config), "serve", "--workers", "2"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert "2 workers need [shared] url" in done.stderr
    assert "Traceback" not in done.stderr
