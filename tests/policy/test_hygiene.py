"""Clients that cost more than their share: slow requests, too many connections, no descriptors left."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket

import pytest

from quotagate.config import parse_config
from quotagate.policy.metrics import Metrics
from quotagate.policy.server import PolicyServer
from tests.policy.conftest import FULL, REJECT, Client, Site, connected, request, run, serving_site, wait_until

CLOSED = "quotagate_policy_connections_closed_total"


async def trickle(client: Client, data: bytes, every: float) -> bytes:
    """Send ``data`` a byte at a time; what the server sent back once it closed (b"" for none)."""
    for i in range(len(data)):
        try:
            await client.send(data[i : i + 1])
        except ConnectionError:
            break
        await asyncio.sleep(every)
    return await client.read_to_eof(timeout=1)


@pytest.mark.slow
def test_twenty_slow_clients_are_cut_off_after_request_timeout_and_do_not_block_a_normal_check(site: Site) -> None:
    async def main() -> tuple[list[bytes], list[float], float, float]:
        # A byte every 0.25 s never leaves a connection idle for idle_timeout: only the request
        # deadline can end it (a whole request would take about a minute).
        async with serving_site(site, request_timeout=1.5, idle_timeout=30) as running:
            loop = asyncio.get_running_loop()
            slow = [await Client.connect(running.host_port) for _ in range(20)]
            try:
                started = loop.time()
                trickling = [asyncio.create_task(trickle(c, request(FULL), 0.25)) for c in slow]
                await asyncio.sleep(0.5)
                latencies = []
                for _ in range(5):  # meanwhile, a normal client is answered at once
                    async with connected(running.host_port) as normal:
                        asked = loop.time()
                        assert await normal.ask(request(FULL)) == REJECT
                        latencies.append(loop.time() - asked)
                    await asyncio.sleep(0.1)
                got = await asyncio.wait_for(asyncio.gather(*trickling), 10)
                elapsed = loop.time() - started
                assert await wait_until(lambda: running.sample("quotagate_policy_connections") == 0)
                return got, latencies, elapsed, running.sample(CLOSED, reason="request_timeout")
            finally:
                for c in slow:
                    await c.close()

    got, latencies, elapsed, closed = run(main())
    assert got == [b""] * 20  # closed without an answer, long before their requests were complete
    assert max(latencies) < 0.5, latencies  # generous: the issue asks that they are not blocked
    assert elapsed < 1.5 + 5
    assert closed == 20


def test_a_request_begun_in_the_read_that_ends_the_one_before_gets_its_own_deadline(site: Site) -> None:
    """Scenario: request_timeout = 1 s. A client sends half of request A; 0.7 s later the rest of
    A with the first half of B (one write, cut mid-request by the network); 0.7 s later the rest
    of B: each took 0.7 s from its own first byte.
    Expected: both answered. B was timed from A's first byte, so the client was cut off 0.3 s
    into it and counted as too slow."""
    a, b = request(FULL), request(FULL)

    async def main() -> list[bytes]:
        async with (
            serving_site(site, request_timeout=1.0, idle_timeout=30) as running,
            connected(running.host_port) as client,
        ):
            await client.send(a[:40])
            await asyncio.sleep(0.7)
            await client.send(a[40:] + b[:40])
            answers = [await client.answer(timeout=3)]
            await asyncio.sleep(0.7)
            try:
                await client.send(b[40:])
                answers.append(await client.answer(timeout=3))
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                answers.append(repr(exc).encode())
            return answers

    assert run(main()) == [REJECT, REJECT]


def test_connections_over_the_cap_are_logged_once_a_minute_with_a_count(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="quotagate.policy.server")

    async def main() -> float:
        async with serving_site(site, max_connections=3) as running:
            kept = [await Client.connect(running.host_port) for _ in range(3)]
            try:
                for c in kept:
                    assert await c.ask(request(FULL)) == REJECT
                for _ in range(5):
                    async with connected(running.host_port) as extra:
                        assert await extra.read_to_eof(timeout=5) == b""
                assert await wait_until(lambda: running.sample(CLOSED, reason="max_connections") == 5)
                return running.sample(CLOSED, reason="max_connections")
            finally:
                for c in kept:
                    await c.close()

    assert run(main()) == 5
    lines = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    assert lines == ["more than max_connections (3) connections: closing new ones (1 times since the last such line)"]


@contextlib.contextmanager
def descriptors(limit: int):  # type: ignore[no-untyped-def]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_running_out_of_descriptors_on_accept_is_logged_once_and_counted(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The server and its clients share this process: the last descriptor goes to a client's
    socket, whose connection the server then cannot accept (EMFILE)."""
    caplog.set_level(logging.WARNING, logger="quotagate.policy.server")

    async def main() -> tuple[float, bytes]:
        async with serving_site(site) as running:
            await asyncio.sleep(0.1)
            opened: list[socket.socket] = []
            try:
                import os

                in_use = len(os.listdir("/proc/self/fd"))
                with descriptors(in_use + 20):
                    for _ in range(40):
                        try:
                            sock = socket.socket()
                        except OSError as exc:
                            assert exc.errno == errno.EMFILE
                            break
                        opened.append(sock)
                        sock.setblocking(False)
                        with contextlib.suppress(BlockingIOError):
                            sock.connect(running.host_port)
                        await asyncio.sleep(0.02)
                    assert await wait_until(
                        lambda: running.sample("quotagate_policy_accept_errors_total", errno="EMFILE") > 0
                    )
            finally:
                for sock in opened:
                    sock.close()
            await asyncio.sleep(1.2)  # asyncio retries accepting a second later
            async with connected(running.host_port) as later:
                answer = await later.ask(request(FULL))
            return running.sample("quotagate_policy_accept_errors_total", errno="EMFILE"), answer

    errors, answer = run(main())
    assert errors >= 1
    assert answer == REJECT
    lines = [r.getMessage() for r in caplog.records if "EMFILE" in r.getMessage()]
    assert len(lines) == 1, lines


def test_descriptors_near_the_limit_are_logged_whatever_the_event_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # uvloop drops connections it cannot accept without a word: the count against the limit speaks.
    config = parse_config({"policy": {"metrics": ""}})
    metrics = Metrics()
    server = PolicyServer(lambda *_: "DUNNO", config.policy, metrics)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 2, hard))
    try:
        with caplog.at_level(logging.WARNING):
            server.check_descriptors()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert any("file descriptors in use" in r.getMessage() for r in caplog.records)
    assert (metrics.registry.get_sample_value("quotagate_policy_open_descriptors") or 0) >= used
