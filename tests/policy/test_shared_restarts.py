"""``[shared]`` across a restart or a crash of ``quotagate serve``, and across its workers, while
Redis is away or just after: what Redis missed is replayed, and room let go is never held again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from quotagate.config import Config, parse_config
from quotagate.policy import state
from quotagate.policy.daemon import Daemon
from quotagate.policy.live import load_snapshot
from quotagate.policy.reservations import Transaction
from quotagate.store import open_store
from tests.policy import test_shared
from tests.policy.conftest import DUNNO, ROOMY, Client, Site, make_site, run, serving, wait_until
from tests.policy.shared_serve import held, held_bytes
from tests.policy.test_shared import daemon, redis
from tests.policy.transactions import FITS, MESSAGE, end, rcpt
from tests.servers.redis import RedisProcess
from tests.servers.redisproxy import proxied

__all__ = ["redis"]  # the fixture: a private redis-server for the module

pytestmark = pytest.mark.servers


def _config(site: Site, url: str) -> Config:
    data = site.data(state_file=str(site.base / "reservations.json"))
    data["shared"] = {"url": url, "node": "mx1", "timeout": 0.5, "retry_seconds": 0.1, "prefix": site.base.name}
    return parse_config(data)


def _started(site: Site, config: Config) -> Daemon:
    """A daemon as ``Daemon.run`` starts one, up to its shared ledger's start: its snapshot, and
    the reservations (and what its ledger owed Redis) restored from its state file."""
    d = Daemon(lambda: config)
    store = open_store(site.db_url)
    try:
        d.service.snapshot = load_snapshot(store)
    finally:
        store.close()
    d._restore_reservations()
    return d


async def _ask(host_port: tuple[str, int], data: bytes) -> bytes:
    client = await Client.connect(host_port)
    try:
        return await client.ask(data)
    finally:
        await client.close()


def test_a_transaction_end_seen_during_an_outage_survives_a_restart(tmp_path: Path, redis: RedisProcess) -> None:
    """Scenario: a transaction holds room in Redis. The MX loses Redis (a partition: Redis keeps
    its data); the client quits, and the end is queued for Redis. While Redis is still away the
    admin restarts quotagate serve (SIGTERM, a clean stop). Redis then comes back.
    Expected: the end reaches Redis and the room goes, as it would have without the restart.
    The queue of changes Redis missed used to live in memory only (the state file kept the
    daemon's own reservations, not the ends it owed Redis): after the restart the ended
    transaction's room stayed held in Redis for reservation_seconds (600 s), deferring every
    other client's mail for it on every MX."""
    site = make_site(tmp_path)

    async def go() -> tuple[int, bool, int, bool]:
        async with proxied(redis.host, redis.port) as proxy:
            config = _config(site, proxy.url)
            first = _started(site, config)
            first_ledger = first.shared
            assert first_ledger is not None
            await first_ledger.start()
            try:
                async with serving(config, first.service.respond, first.metrics) as running:
                    assert await _ask(running.host_port, rcpt(0)) == DUNNO  # held in Redis
                    before = held_bytes(redis.url, site.base.name, ROOMY)
                    proxy.cut()
                    assert await wait_until(lambda: not first_ledger.up, 5)
                    await _ask(running.host_port, end(0))  # queued for Redis
            finally:
                # What Daemon.run does on SIGTERM, after draining the connections.
                await first._save_reservations()
                await first_ledger.close()
            owed = site.base / "reservations.json.owed"  # what it owed Redis, beside its state file
            kept = owed.exists()
            second = _started(site, config)
            second_ledger = second.shared
            assert second_ledger is not None
            await second_ledger.start()
            try:
                proxy.mend()
                assert await wait_until(lambda: second_ledger.up and second_ledger.settled, 10)
                await wait_until(lambda: not owed.exists(), 5)  # replayed: kept no more
                return before, kept, held_bytes(redis.url, site.base.name, ROOMY), owed.exists()
            finally:
                await second_ledger.close()

    before, kept, after, still_owed = run(go())
    assert before == MESSAGE
    assert after == 0, f"{after} bytes still held in Redis for a transaction that ended before the restart"
    assert (kept, still_owed) == (True, False)


def test_a_crash_after_the_write_back_does_not_bring_back_room_of_an_ended_transaction(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: Redis is away for a while; a transaction holds room in the daemon alone, and the
    daemon's housekeeping writes it to its state_file. Redis comes back: the room is written back
    to Redis and let go locally. The transaction then ends without data (QUIT): Redis lets its
    room go. A few seconds later, before the next housekeeping rewrote the state file, the daemon
    dies outright (OOM kill, a worker killed as stuck) and is started again.
    Expected: nothing is held for that transaction after the restart. The restarted daemon used
    to restore the stale state file and write the ended transaction's room back to Redis as held
    (the script's restore only skipped a transaction Redis still had): every MX deferred mail for
    that room for reservation_seconds (600 s)."""
    site = make_site(tmp_path)

    async def go() -> tuple[int, int, int]:
        async with proxied(redis.host, redis.port) as proxy:
            config = _config(site, proxy.url)
            first = _started(site, config)
            first_ledger = first.shared
            assert first_ledger is not None
            proxy.cut()
            await first_ledger.start()
            assert not first_ledger.up
            try:
                async with serving(config, first.service.respond, first.metrics) as running:
                    assert await _ask(running.host_port, rcpt(0)) == DUNNO  # held by this daemon alone
                    await first._save_reservations()  # a housekeeping tick (every 5 s)
                    proxy.mend()
                    assert await wait_until(lambda: first_ledger.up and len(first.service.reservations) == 0, 10)
                    written_back = held_bytes(redis.url, site.base.name, ROOMY)
                    await _ask(running.host_port, end(0))  # QUIT: the transaction ends without data
                    assert await wait_until(lambda: first_ledger.settled, 5)
                    after_end = held_bytes(redis.url, site.base.name, ROOMY)
            finally:
                await first_ledger.close()  # killed: no last save of the state file
            second = _started(site, config)
            assert len(second.service.reservations) == 1  # the stale file's
            second_ledger = second.shared
            assert second_ledger is not None
            await second_ledger.start()
            try:
                assert await wait_until(lambda: second_ledger.up and second_ledger.settled, 5)
                return written_back, after_end, held_bytes(redis.url, site.base.name, ROOMY)
            finally:
                await second_ledger.close()

    written_back, after_end, after_restart = run(go())
    assert (written_back, after_end) == (MESSAGE, 0)
    assert after_restart == 0, f"{after_restart} bytes held in Redis again for a transaction that had ended"


def test_a_transaction_ended_on_another_worker_during_an_outage_holds_nothing_afterwards(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: `serve --workers 2` (two daemons of one host: one node name) while Redis is
    away. A transaction's RCPT check reaches worker 1, which holds its room alone; the client
    then quits and the generated ACL's end (a new readsocket connection) reaches worker 2, which
    queues it for Redis. Redis comes back; worker 2 gets there first and replays the end, then
    worker 1 writes its room back.
    Expected: nothing is held for the ended transaction, and all of `roomy`'s room (4 messages)
    is free for other clients. Worker 1 used to write the room back as held (the end, replayed
    first, had found nothing in Redis), and Redis held it for reservation_seconds (600 s): the
    fourth message was deferred (452) meanwhile."""
    site = make_site(tmp_path)

    async def go() -> tuple[list[bytes], int]:
        async with cut_off_workers(site, redis) as (worker1, worker2, mend):
            assert await worker1.ask(rcpt(0)) == DUNNO  # held by worker 1 alone
            await worker2.ask(end(0))  # the end reaches worker 2: queued
            await mend()
            left = held_bytes(redis.url, site.base.name, ROOMY)
            answers = [await (worker1 if n % 2 else worker2).ask(rcpt(n)) for n in range(1, FITS + 1)]
            return answers, left

    answers, left = run(go())
    assert left == 0, f"{left} bytes held in Redis for a transaction that ended"
    assert answers == [DUNNO] * FITS, answers


def test_a_message_accepted_on_another_worker_during_an_outage_stays_in_flight_at_its_size(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: as above, but the transaction's message is accepted (END-OF-MESSAGE, 3,000
    bytes where 2,000 were declared) on worker 2, while worker 1 holds its room alone.
    Expected: worker 1's write-back holds the room in flight at the message's real size (mail
    on its way is never forgotten), not as room held before DATA at the declared size."""
    site = make_site(tmp_path)

    async def go() -> dict[str, dict[str, object]]:
        async with cut_off_workers(site, redis) as (worker1, worker2, mend):
            assert await worker1.ask(rcpt(0)) == DUNNO  # held by worker 1 alone
            transaction = Transaction("192.0.2.1", "tx0")  # rcpt(0)'s
            worker2.service.reservations.end(transaction, True, time.time(), 3_000)  # queued
            await mend()
            return held(redis.url, site.base.name, ROOMY)

    rows = list(run(go()).values())
    assert [(row["s"], row["b"]) for row in rows] == [("flight", 3_000)], rows


def test_what_is_owed_to_redis_is_kept_beside_the_state_file_and_goes_once_replayed(tmp_path: Path) -> None:
    """The file of changes owed to Redis: written atomically with mode 0600 beside the state
    file, read back as written, gone when nothing is owed; one that cannot be used is said and
    replays nothing (a restart never fails for it)."""
    path = tmp_path / "reservations.json"
    rows: list[list[Any]] = [
        ["end", "", [0, ""], ["192.0.2.1", "tx0"], 0.0, 12.5],
        ["delivered", ROOMY, ["ab12"], None, 0.0, 0.0],
    ]
    state.save_owed(path, rows)
    owed = state.owed_file(path)
    assert owed.stat().st_mode & 0o777 == 0o600
    assert state.load_owed(path) == rows
    state.save_owed(path, [])
    assert not owed.exists()
    state.save_owed(path, [])  # nothing there: nothing to do
    owed.write_text('{"version": 1, "owed": "not rows"}')
    assert state.load_owed(path) == []


@contextlib.asynccontextmanager
async def cut_off_workers(
    site: Site, redis: RedisProcess
) -> AsyncIterator[tuple[test_shared.Daemon, test_shared.Daemon, Callable[[], Awaitable[None]]]]:
    """Two workers of one host (one node name), each cut off from Redis; ``mend`` gives worker 2
    its link back, then worker 1, each once it used Redis again."""
    async with (
        proxied(redis.host, redis.port) as link1,
        proxied(redis.host, redis.port) as link2,
        daemon(site, link1.url, "mx1") as worker1,
        daemon(site, link2.url, "mx1") as worker2,
    ):
        ledger1, ledger2 = worker1.ledger, worker2.ledger
        assert ledger1 is not None and ledger2 is not None
        link1.cut()
        link2.cut()
        assert await wait_until(lambda: not ledger1.up and not ledger2.up, 5)

        async def mend() -> None:
            link2.mend()
            assert await wait_until(lambda: ledger2.up and ledger2.settled, 10)
            link1.mend()
            assert await wait_until(lambda: ledger1.up and ledger1.settled, 10)

        yield worker1, worker2, mend
