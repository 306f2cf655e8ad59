"""The policy server in process: real sockets in front, the real service and a scanned store behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import grp
import logging
import os
import resource
import socket
import stat
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.errors import StartupError
from quotagate.policy.codec import PolicyDecoder, PolicyItem
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from tests.policy.conftest import (
    BUSY,
    DUNNO,
    FULL,
    QUOTA,
    REJECT,
    ROOMY,
    ROOMY_USED,
    Client,
    Site,
    connected,
    read_answer,
    request,
    run,
    serving,
    serving_site,
    too_big,
    wait_until,
)

CONNECTIONS = "quotagate_policy_connections"


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit for one test, then put it back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- Postfix and Exim framing -------------------------------------------------------------------


SESSION = [
    (request(FULL), REJECT),
    (request(ROOMY, 100), DUNNO),
    (request(FULL, 10), REJECT),
    (request(f"nobody@{'example.org'}"), DUNNO),
    (request(ROOMY, 20_000), too_big(20_000)),  # more than the quota: does not fit whatever is used
    (request(FULL, state="DATA"), DUNNO),  # only RCPT is checked
    (request(ROOMY), DUNNO),
]


def test_several_requests_on_one_connection_are_answered_in_order(site: Site) -> None:
    async def main() -> list[bytes]:
        async with serving_site(site) as running, connected(running.host_port) as client:
            return [await client.ask(data) for data, _ in SESSION]

    assert run(main()) == [answer for _, answer in SESSION]


@pytest.mark.parametrize("piece", [1, 7, 10_000], ids=["byte-by-byte", "7-bytes", "one-write"])
def test_pipelined_requests_get_their_answers_in_order_however_they_are_cut(site: Site, piece: int) -> None:
    data = b"".join(d for d, _ in SESSION)

    async def main() -> bytes:
        async with serving_site(site) as running, connected(running.host_port) as client:
            for i in range(0, len(data), piece):
                await client.send(data[i : i + piece])
            return b"".join([await client.answer() for _ in SESSION])

    assert run(main()) == b"".join(answer for _, answer in SESSION)


@pytest.mark.parametrize(
    "data",
    [request(FULL), request(FULL, end=False), request(FULL, end=False)[:-1]],
    ids=["with-empty-line", "without-empty-line", "without-last-lf"],
)
def test_one_request_then_half_close_gets_exactly_one_answer_then_eof(site: Site, data: bytes) -> None:
    """Exim's ${readsocket}: write the request, shut down the sending side, read to end of file."""

    def exim(where: tuple[str, int]) -> bytes:
        with socket.create_connection(where, timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    async def main() -> bytes:
        async with serving_site(site) as running:
            return await asyncio.to_thread(exim, running.host_port)

    assert run(main()) == REJECT


def test_a_half_close_with_nothing_sent_gets_no_answer(site: Site) -> None:
    async def main() -> bytes:
        async with serving_site(site) as running, connected(running.host_port) as client:
            await client.half_close()
            return await client.read_to_eof()

    assert run(main()) == b""


def test_a_unix_socket_listener_answers_and_gets_socket_mode_and_group(site: Site, short_tmp: Path) -> None:
    path = short_tmp / "policy.sock"
    # A socket left behind by an earlier run is replaced.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    group = grp.getgrgid(os.getgid()).gr_name

    async def main() -> tuple[list[str], os.stat_result, bytes]:
        async with (
            serving_site(site, listen=[f"unix:{path}"], socket_mode="0604", socket_group=group) as running,
            connected(str(path)) as client,
        ):
            return running.addresses, path.stat(), await client.ask(request(FULL))

    addresses, st, answer = run(main())
    assert addresses == [f"unix:{path}"]
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_gid == os.getgid()
    assert answer == REJECT


def test_a_regular_file_at_the_unix_socket_path_is_not_deleted(site: Site, short_tmp: Path) -> None:
    path = short_tmp / "important"
    path.write_text("not a socket\n")

    async def main() -> None:
        async with serving_site(site, listen=[f"unix:{path}"]):
            pass

    with pytest.raises(StartupError, match="exists and is not a socket"):
        run(main())
    assert stat.S_ISREG(path.stat().st_mode), "the file was replaced by a socket"
    assert path.read_text() == "not a socket\n"


def test_listening_on_two_addresses_answers_on_both(site: Site, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"

    async def main() -> list[bytes]:
        async with serving_site(site, listen=["127.0.0.1:0", f"unix:{path}"]) as running:
            assert running.addresses[1] == f"unix:{path}"
            async with connected(running.host_port) as tcp, connected(str(path)) as unix:
                return [await tcp.ask(request(FULL)), await unix.ask(request(FULL))]

    assert run(main()) == [REJECT, REJECT]


# --- malformed and hostile input ----------------------------------------------------------------


MALFORMED = [
    b"this line has no equals sign\n\n",
    b"\x00\x01\x02garbage\x00\xff\x00\n\x00\n\n",
    b"request=smtpd_access_policy\nrecipient=\x00full@example.org\n\n",
    b"=no name\n\n",
]


@pytest.mark.parametrize("bad", MALFORMED, ids=["no-equals", "binary-nul", "nul-in-value", "no-name"])
def test_a_malformed_request_gets_dunno_and_the_next_one_is_answered(site: Site, bad: bytes) -> None:
    async def main() -> tuple[list[bytes], float]:
        async with serving_site(site) as running, connected(running.host_port) as client:
            answers = [await client.ask(bad), await client.ask(request(FULL)), await client.ask(request(ROOMY))]
            return answers, running.sample("quotagate_policy_requests_total", decision="malformed")

    answers, malformed = run(main())
    assert answers == [DUNNO, REJECT, DUNNO]
    assert malformed == 1


def test_malformed_and_valid_requests_in_one_write_are_answered_one_each_in_order(site: Site) -> None:
    data = b"".join(bad + request(FULL) for bad in MALFORMED)

    async def main() -> bytes:
        async with serving_site(site) as running, connected(running.host_port) as client:
            await client.send(data)
            return b"".join([await client.answer() for _ in range(2 * len(MALFORMED))])

    assert run(main()) == (DUNNO + REJECT) * len(MALFORMED)


def test_a_flood_of_malformed_requests_is_counted_but_logged_once(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    """A hostile client must not write the log full: one line a minute, every request counted."""
    caplog.set_level(logging.WARNING, logger="quotagate.policy.server")
    flood = MALFORMED[0] * 2000

    async def main() -> float:
        async with serving_site(site) as running, connected(running.host_port) as client:
            await client.send(flood)
            for _ in range(2000):
                assert await client.answer() == DUNNO
            return running.sample("quotagate_policy_requests_total", decision="malformed")

    assert run(main()) == 2000
    assert caplog.text.count("malformed policy request") == 1


@pytest.mark.parametrize("megabytes", [1, 8])
def test_a_huge_line_gets_dunno_in_bounded_memory_while_others_are_served(
    site: Site, monkeypatch: pytest.MonkeyPatch, megabytes: int
) -> None:
    buffered: list[int] = []
    feed = PolicyDecoder.feed

    def spying_feed(self: PolicyDecoder, data: bytes) -> list[PolicyItem]:
        items = feed(self, data)
        buffered.append(self.buffered)
        return items

    monkeypatch.setattr(PolicyDecoder, "feed", spying_feed)
    piece = b"x" * 65536
    length = megabytes << 20

    async def main() -> tuple[list[bytes], int]:
        async with serving_site(site) as running, connected(running.host_port) as big:
            await big.send(b"request=smtpd_access_policy\nrecipient=")
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                for _ in range(length // len(piece) // 2):
                    await big.send(piece)
                # Half-way through the line, another client is served as usual.
                async with connected(running.host_port) as other:
                    meanwhile = await other.ask(request(FULL))
                for _ in range(length // len(piece) // 2):
                    await big.send(piece)
                await big.send(b"@example.org\nsize=10\n\n")
                answer = await big.answer()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            after = await big.ask(request(FULL))
            return [meanwhile, answer, after], peak

    answers, peak = run(main())
    assert answers == [REJECT, DUNNO, REJECT]
    assert max(buffered) <= PolicyDecoder().buffer_limit
    # Stream buffers take a few hundred KB whatever the line's length; the line itself is never held.
    assert peak < 2 << 20, f"{peak} bytes allocated at the peak for a {length}-byte line"


# --- timeouts and limits ------------------------------------------------------------------------


def test_idle_and_half_open_connections_are_closed_after_the_idle_timeout(site: Site) -> None:
    async def main() -> tuple[list[bytes], float, float, bytes]:
        async with serving_site(site, idle_timeout=0.5) as running:
            loop = asyncio.get_running_loop()
            silent = [await Client.connect(running.host_port) for _ in range(20)]
            half_open = await Client.connect(running.host_port)
            try:
                await half_open.send(b"request=smtpd_access_policy\nrecipient=fu")  # and then nothing
                started = loop.time()
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 21)
                eofs = await asyncio.gather(*(c.read_to_eof(timeout=5) for c in [*silent, half_open]))
                elapsed = loop.time() - started
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 0)
                async with connected(running.host_port) as later:
                    answer = await later.ask(request(FULL))
                return eofs, elapsed, running.sample(CONNECTIONS), answer
            finally:
                for c in [*silent, half_open]:
                    await c.close()

    eofs, elapsed, connections, answer = run(main())
    assert eofs == [b""] * 21
    assert 0.3 < elapsed < 4
    assert connections == 1  # only the later one, still open when sampled
    assert answer == REJECT


@pytest.mark.slow
def test_a_connection_in_use_is_not_closed_by_the_idle_timeout(site: Site) -> None:
    async def main() -> list[bytes]:
        async with serving_site(site, idle_timeout=0.5) as running, connected(running.host_port) as client:
            answers = []
            for _ in range(5):  # 1.5 s in all, never 0.5 s idle
                answers.append(await client.ask(request(FULL)))
                await asyncio.sleep(0.3)
            return answers

    assert run(main()) == [REJECT] * 5


def test_a_client_that_half_closes_and_never_reads_its_answers_is_cut_off(site: Site) -> None:
    """Scenario: a client pipelines requests without reading an answer until the kernel takes no
    more of them (some wait in the server's transport, below its high-water mark, so it still
    reads), then half-closes: the transport is closing, its answers never written.
    Expected: cut off once idle_timeout passes, as any idle connection: one periodic look at
    every connection's deadlines that passed over closing ones left it open, and counted
    against max_connections, for ever."""
    config = site.config(idle_timeout=0.5, drain_seconds=0.2)

    async def main() -> tuple[bool, bool]:
        async with serving(config, lambda *_: "DUNNO " + "x" * 400, Metrics()) as running:
            loop = asyncio.get_running_loop()
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(running.host_port)
                sock.setblocking(False)
                assert await wait_until(lambda: len(running.server.connections) == 1)
                transport = next(iter(running.server.connections)).transport
                assert transport is not None
                for _ in range(5000):
                    await loop.sock_sendall(sock, b"a=b\n\n" * 10)
                    await asyncio.sleep(0.002)
                    if transport.get_write_buffer_size() > 0:
                        break
                assert 0 < transport.get_write_buffer_size() < 64 * 1024
                sock.shutdown(socket.SHUT_WR)
                closing = await wait_until(transport.is_closing, timeout=3)
                return closing, await wait_until(lambda: running.sample(CONNECTIONS) == 0, timeout=3)

    closing, gone = run(main())
    assert closing  # the scenario was reached
    assert gone


def test_a_client_that_never_reads_its_answers_is_disconnected(site: Site) -> None:
    config = site.config(idle_timeout=0.5)
    metrics = Metrics()

    async def main() -> bool:
        # Big answers, so that a little input fills every buffer between server and client.
        async with serving(config, lambda *_: "DUNNO " + "x" * 500, metrics) as running:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(running.host_port)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_sendall(sock, b"a=b\n\n" * 20_000)
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 1)
                return await wait_until(lambda: running.sample(CONNECTIONS) == 0, timeout=3)

    assert run(main())


def test_a_thousand_concurrent_connections_are_all_answered(site: Site) -> None:
    n = 1000

    async def main() -> tuple[list[bytes], float]:
        async with serving_site(site) as running:  # max_connections defaults to 1000
            connecting = asyncio.Semaphore(100)  # the listen backlog is 100

            async def connect() -> Client:
                async with connecting:
                    return await Client.connect(running.host_port)

            opened = await asyncio.gather(*(connect() for _ in range(n)), return_exceptions=True)
            clients = [c for c in opened if isinstance(c, Client)]
            try:
                assert len(clients) == n, [c for c in opened if not isinstance(c, Client)][:3]
                assert await wait_until(lambda: running.sample(CONNECTIONS) == n, timeout=10)
                peak = running.sample(CONNECTIONS)
                for i, c in enumerate(clients):
                    c.writer.write(request(FULL if i % 2 else ROOMY))
                await asyncio.gather(*(c.writer.drain() for c in clients))
                answers = await asyncio.gather(*(c.answer(timeout=20) for c in clients))
            finally:
                await asyncio.gather(*(c.close() for c in clients))
            return answers, peak

    with open_files(2 * n + 200):
        answers, peak = run(main(), timeout=50)
    assert peak == n
    assert answers == [REJECT if i % 2 else DUNNO for i in range(n)]


def test_connections_beyond_max_connections_are_closed_without_an_answer(site: Site) -> None:
    limit = 50

    async def main() -> tuple[list[bytes], list[bytes], list[bytes], bytes]:
        async with serving_site(site, max_connections=limit) as running:
            kept = [await Client.connect(running.host_port) for _ in range(limit)]
            extra: list[Client] = []
            try:
                first = [await c.ask(request(FULL)) for c in kept]  # all 50 registered and served
                for _ in range(10):
                    c = await Client.connect(running.host_port)
                    extra.append(c)
                    with contextlib.suppress(ConnectionError):
                        await c.send(request(FULL))
                refused = [await c.read_to_eof(timeout=5) for c in extra]
                still = [await c.ask(request(FULL)) for c in kept]  # the server stays healthy
                await kept.pop().close()
                assert await wait_until(lambda: running.sample(CONNECTIONS) == limit - 1)
                async with connected(running.host_port) as later:
                    answer = await later.ask(request(FULL))
            finally:
                for c in kept + extra:
                    await c.close()
            return first, refused, still, answer

    first, refused, still, answer = run(main())
    assert first == [REJECT] * limit
    assert refused == [b""] * 10
    assert still == [REJECT] * limit
    assert answer == REJECT


# --- the reservation race -----------------------------------------------------------------------


def test_concurrent_checks_accept_exactly_as_many_messages_as_fit(site: Site) -> None:
    """N clients at once, each SIZE=S, a mailbox with room for k < N: k accepted, N - k refused."""
    n, size = 20, 3_000
    k = (QUOTA - ROOMY_USED) // size  # 3, filling the mailbox exactly: the check is inclusive
    barrier = threading.Barrier(n)

    def client(where: tuple[str, int], i: int) -> bytes:
        with socket.create_connection(where, timeout=10) as sock:
            barrier.wait(timeout=10)
            sock.sendall(request(ROOMY, size, client=f"198.51.100.{i}"))  # each a client of its own
            return read_answer(sock)

    async def main() -> tuple[list[bytes], bytes, float]:
        async with serving_site(site) as running:
            loop = asyncio.get_running_loop()
            with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
                answers = await asyncio.gather(
                    *(loop.run_in_executor(pool, client, running.host_port, i) for i in range(n))
                )
            async with connected(running.host_port) as later:
                one_byte = await later.ask(request(ROOMY, 1))
            return answers, one_byte, running.sample("quotagate_policy_requests_total", decision="defer")

    answers, one_byte, deferred = run(main())
    assert k == 3
    assert answers.count(DUNNO) == k
    # Refused for now: only the room held for the three stands in the way, and it may yet go.
    assert answers.count(BUSY) == n - k
    assert one_byte == BUSY  # the room held for the three is really gone
    assert deferred == n - k + 1


# --- internal errors ----------------------------------------------------------------------------


def test_an_exception_in_the_service_answers_dunno_counts_and_logs_the_traceback(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="quotagate.policy.service")

    def broken(self: PolicyService, *args: object, **kwargs: object) -> object:
        raise RuntimeError("the store exploded")

    monkeypatch.setattr(PolicyService, "_decide", broken)

    async def main() -> tuple[list[bytes], float]:
        async with serving_site(site) as running, connected(running.host_port) as client:
            answers = [await client.ask(request(FULL)), await client.ask(request(FULL, 10))]
            return answers, running.sample("quotagate_policy_errors_total")

    answers, errors = run(main())
    assert answers == [DUNNO, DUNNO]
    assert errors == 2
    records = [r for r in caplog.records if r.name == "quotagate.policy.service" and r.levelno == logging.ERROR]
    assert len(records) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in records)
    assert FULL in records[0].getMessage()
    assert "Traceback (most recent call last)" in caplog.text
    assert "RuntimeError: the store exploded" in caplog.text


# --- closing ------------------------------------------------------------------------------------


def test_close_shuts_idle_connections_at_once(site: Site) -> None:
    async def main() -> tuple[float, list[bytes]]:
        async with serving_site(site, drain_seconds=5) as running:
            clients = [await Client.connect(running.host_port) for _ in range(5)]
            try:
                for c in clients[:2]:
                    assert await c.ask(request(FULL)) == REJECT  # used, then idle
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 5)
                loop = asyncio.get_running_loop()
                started = loop.time()
                await running.server.close()
                elapsed = loop.time() - started
                eofs = await asyncio.gather(*(c.read_to_eof(timeout=2) for c in clients))
            finally:
                for c in clients:
                    await c.close()
            return elapsed, eofs

    elapsed, eofs = run(main())
    assert elapsed < 1
    assert eofs == [b""] * 5


def test_close_logs_no_error_for_idle_connections(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with serving_site(site) as running:
            clients = [await Client.connect(running.host_port) for _ in range(3)]
            try:
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 3)
                await running.server.close()
                await asyncio.sleep(0.05)  # let the loop run the tasks' done-callbacks
            finally:
                for c in clients:
                    await c.close()

    run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_close_lets_a_request_in_progress_finish_and_stops_accepting(site: Site) -> None:
    async def main() -> tuple[bytes, bool, float]:
        async with serving_site(site, drain_seconds=5) as running:
            loop = asyncio.get_running_loop()
            async with connected(running.host_port) as busy:
                first = request(FULL)
                await busy.send(first[:40])
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 1)
                await asyncio.sleep(0.05)  # the server has read the first part: the connection is busy
                started = loop.time()
                closing = asyncio.create_task(running.server.close())
                await asyncio.sleep(0.1)
                try:
                    refused = False
                    async with connected(running.host_port):
                        pass
                except ConnectionRefusedError:
                    refused = True
                await busy.send(first[40:])
                answer = await busy.answer()
                await busy.half_close()  # the client is done (as Exim is after one request)
                await asyncio.wait_for(closing, 4)
                return answer, refused, loop.time() - started

    answer, refused, elapsed = run(main())
    assert answer == REJECT
    assert refused
    assert elapsed < 2


def test_close_ends_a_busy_connection_once_its_request_is_answered(site: Site) -> None:
    async def main() -> tuple[bytes, bytes, float]:
        async with serving_site(site, drain_seconds=3) as running:
            loop = asyncio.get_running_loop()
            async with connected(running.host_port) as busy:
                first = request(FULL)
                await busy.send(first[:40])
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 1)
                await asyncio.sleep(0.05)
                started = loop.time()
                closing = asyncio.create_task(running.server.close())
                await asyncio.sleep(0.1)
                await busy.send(first[40:])
                answer = await busy.answer()
                eof = await busy.read_to_eof(timeout=5)  # Postfix keeps the connection: the server ends it
                await asyncio.wait_for(closing, 5)
                return answer, eof, loop.time() - started

    answer, eof, elapsed = run(main())
    assert answer == REJECT
    assert eof == b""
    assert elapsed < 1.5


def test_close_cancels_a_request_that_never_finishes_after_drain_seconds(site: Site) -> None:
    async def main() -> tuple[float, bytes]:
        async with serving_site(site, drain_seconds=0.3, idle_timeout=30) as running:
            loop = asyncio.get_running_loop()
            async with connected(running.host_port) as stuck:
                await stuck.send(b"request=smtpd_access_policy\n")
                assert await wait_until(lambda: running.sample(CONNECTIONS) == 1)
                await asyncio.sleep(0.05)
                started = loop.time()
                await asyncio.wait_for(running.server.close(), 5)
                elapsed = loop.time() - started
                return elapsed, await stuck.read_to_eof(timeout=2)

    elapsed, eof = run(main())
    assert 0.2 < elapsed < 2
    assert eof == b""


def test_close_with_no_connections_returns_at_once(site: Site) -> None:
    async def main() -> float:
        async with serving_site(site, drain_seconds=5) as running:
            started = time.monotonic()
            await running.server.close()
            return time.monotonic() - started

    assert run(main()) < 0.5
