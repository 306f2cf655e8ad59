"""``[shared] url`` naming a node of a Redis Cluster: refused, said, and each daemon decides alone."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.policy.conftest import DUNNO, ROOMY, make_site, run
from tests.policy.test_shared import burst, two
from tests.policy.transactions import FITS
from tests.servers.install import require_command
from tests.servers.process import private_dir, spawn_as, stop, wait_for_port
from tests.servers.redis import private_redis

pytestmark = pytest.mark.servers


def _ports(count: int) -> list[int]:
    """Loopback ports free, with their cluster bus ports (+10000) free too."""
    found: list[int] = []
    for port in range(31000, 39000, 7):
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free ports")


@contextlib.contextmanager
def private_cluster() -> Iterator[list[int]]:
    binary = require_command("redis-server", "redis-server")
    work = private_dir("redis-cluster", owner="redis")
    procs = []
    ports = _ports(3)
    try:
        for port in ports:
            node = work / str(port)
            node.mkdir()
            shutil.chown(node, "redis", "redis")
            args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node), "--save", ""]
            args += ["--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            proc = spawn_as("redis", args, node / "redis.log")
            procs.append(proc)
            wait_for_port(port, proc, node / "redis.log")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for port in ports:
            while True:
                admin = Redis(port=port)
                info = admin.execute_command("CLUSTER", "INFO").decode()  # type: ignore[no-untyped-call]
                admin.close()
                if "cluster_state:ok" in info:
                    break
                assert time.monotonic() < deadline, info
                time.sleep(0.2)
        time.sleep(1)
        yield ports
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def test_a_redis_cluster_node_is_refused_and_said_not_used_as_one_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario: two MX hosts are given a node of a Redis Cluster of three masters as `[shared]
    url`, as they would a single server; a burst of ten checks, split between them, asks for
    `roomy` (room for four), whose keys another node serves.
    Expected: the node is not taken for one server: quotagate_shared_up stays 0, an error says
    why and what to give instead, and each daemon decides alone (an outage's bound, which the
    README states). It was taken for one: every call for the mailbox answered MOVED, each check
    was decided alone while quotagate_shared_up said 1, and nobody was told."""
    with private_cluster() as ports:
        probe = Redis(port=ports[0])
        slot = int(probe.execute_command("CLUSTER", "KEYSLOT", ROOMY))  # type: ignore[no-untyped-call]
        slots = probe.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        probe.close()
        owner = next(int(node[2][1]) for node in slots if node[0] <= slot <= node[1])
        url = f"redis://127.0.0.1:{next(p for p in ports if p != owner)}/0"
        site = make_site(tmp_path)

        async def go() -> tuple[list[bytes], float]:
            async with two(site, url) as (a, b):
                answers = await burst(a, b)
                return answers, a.up()

        with caplog.at_level(logging.WARNING, logger="quotagate.policy.shared"):
            answers, up = run(go(), timeout=60)
    assert up == 0
    assert "is a Redis Cluster node" in caplog.text
    assert answers.count(DUNNO) == 2 * FITS  # each alone: the whole room, as in an outage


def test_a_redis_that_may_evict_keys_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Scenario: [shared] url names a Redis with maxmemory and maxmemory-policy volatile-lru (the
    default of managed Redis services): under memory pressure it evicts the keys of held room,
    or a transaction's index, whose end then frees nothing.
    Expected: the daemon says so, naming the policy and noeviction, when it starts using it (it
    never looked)."""
    with private_redis() as server:
        admin = Redis(host=server.host, port=server.port)
        admin.config_set("maxmemory", str(256 * 1024 * 1024))
        admin.config_set("maxmemory-policy", "volatile-lru")
        admin.close()
        site = make_site(tmp_path)

        async def go() -> float:
            async with two(site, server.url) as (a, _):
                return a.up()

        with caplog.at_level(logging.WARNING, logger="quotagate.policy.shared"):
            up = run(go(), timeout=60)
    assert up == 1  # used all the same: an outage's bound is no better
    assert "maxmemory-policy volatile-lru" in caplog.text and "noeviction" in caplog.text
