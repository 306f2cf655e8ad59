"""The shared ledger (Redis) against a client without SIZE=, a slow or refusing Redis, a long
partition, a clock that is behind, and a transaction that ends while its room is written back:
each as it once let a mailbox take more than it holds, or kept room held for nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis import Redis

from quotagate.config import parse_config
from quotagate.model import Reading
from quotagate.policy import daemon as serve
from quotagate.policy.metrics import Metrics
from quotagate.policy.reservations import Reservations
from quotagate.policy.shared import MAX_PENDING, RedisLedger, SharedReservations, _Args, mailbox_keys
from quotagate.store import open_store
from tests.policy.conftest import (
    BUSY,
    DUNNO,
    QUOTA,
    ROOMY,
    ROOMY_USED,
    Client,
    make_site,
    request,
    run,
    serving,
    wait_until,
)
from tests.policy.shared_serve import held_bytes
from tests.policy.test_shared import daemon, redis, two
from tests.policy.transactions import FITS, MESSAGE, rcpt
from tests.servers.redis import RedisProcess, private_redis
from tests.servers.redisproxy import proxied

__all__ = ["redis"]


pytestmark = pytest.mark.servers


def end_of_message(size: int, client: str, instance: str) -> bytes:
    """Postfix's END-OF-MESSAGE for a one-recipient message of ``size`` bytes."""
    return request(ROOMY, size, "END-OF-MESSAGE", client=client, instance=instance)[:-1] + b"recipient_count=1\n\n"


def _sneak(url: str | None, site_dir: Path) -> list[bytes]:
    """Four transactions hold all the room of ``roomy``; a fifth client declares no SIZE= (it
    passes RCPT: nothing it could hold) and then sends a message as large as theirs."""
    site = make_site(site_dir)

    async def go() -> list[bytes]:
        async with daemon(site, url, "mx1") as a:
            answers = [await a.ask(rcpt(n)) for n in range(FITS)]
            client, instance = "198.51.100.7", "sneak"
            answers.append(await a.ask(request(ROOMY, None, client=client, instance=instance)))
            answers.append(await a.ask(end_of_message(MESSAGE, client, instance)))
            return answers

    return run(go())


def test_without_size_a_message_is_weighed_at_data_against_the_room_held_in_redis(
    tmp_path: Path, redis: RedisProcess
) -> None:
    alone = _sneak(None, tmp_path / "alone")
    assert alone == [DUNNO] * FITS + [DUNNO, BUSY], alone  # the daemon's own reservations: refused
    shared = _sneak(redis.url, tmp_path)  # its name, unique, is its key prefix
    # With [shared] the same daemon, the same mail: the held room in Redis must count as well.
    assert shared == alone, shared


def _without_size(url: str | None, site_dir: Path) -> list[bytes]:
    """Five clients, one after another, each a message of 2000 bytes without SIZE=: room for four."""
    site = make_site(site_dir)

    async def go() -> list[bytes]:
        async with daemon(site, url, "mx1") as a:
            answers = []
            for n in range(FITS + 1):
                client, instance = f"198.51.100.{n + 1}", f"nosize{n}"
                answers.append(await a.ask(request(ROOMY, None, client=client, instance=instance)))
                answers.append(await a.ask(end_of_message(MESSAGE, client, instance)))
            if a.ledger is not None:
                await wait_until(lambda: a.ledger is not None and a.ledger.settled)
            return answers

    return run(go())


def test_messages_accepted_at_data_hold_their_room_in_redis(tmp_path: Path, redis: RedisProcess) -> None:
    """Accepted at DATA, a message without SIZE= holds its real size (in flight once accepted),
    or the next one is weighed as if it had not been sent."""
    alone = _without_size(None, tmp_path / "alone")
    assert alone[-1] != DUNNO, alone  # the fifth message does not fit
    shared = _without_size(redis.url, tmp_path)  # its name, unique, is its key prefix
    assert shared == alone, shared


def _refuse_writes(admin: Redis, refuse: bool) -> None:
    admin.config_set("maxmemory", "1" if refuse else "0")  # noeviction: every write is -OOM


def test_a_redis_refusing_writes_is_an_outage_and_the_room_held_alone_is_written_back(
    tmp_path: Path, redis: RedisProcess
) -> None:
    site = make_site(tmp_path)
    admin = Redis.from_url(redis.url)

    async def go() -> tuple[list[bytes], float, list[bytes]]:
        async with two(site, redis.url) as (a, b):
            assert (a.up(), b.up()) == (1, 1)
            _refuse_writes(admin, True)
            try:
                during = [await a.ask(rcpt(n)) for n in range(FITS)]  # fail open: held by a alone
                await asyncio.sleep(0.5)  # several heartbeats (retry_seconds 0.1)
                up_during = a.up()
            finally:
                _refuse_writes(admin, False)

            await wait_until(lambda: a.up() == 1 and len(a.service.reservations) == 0, timeout=5)
            after = [await b.ask(rcpt(10)), await b.ask(rcpt(11))]
            return during, up_during, after

    try:
        during, up_during, after = run(go())
    finally:
        _refuse_writes(admin, False)
        admin.close()
    assert during == [DUNNO] * FITS
    # Once Redis takes writes again the room a held alone counts for b too: the mailbox is full.
    assert after == [BUSY, BUSY], after
    # The daemon decided every check alone: the gauge must not say the shared state was used.
    assert up_during == 0, "quotagate_shared_up stayed 1 while every check was decided alone"


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "shared"])
def test_a_new_transaction_on_a_connection_finds_the_clients_share_free(
    tmp_path: Path, redis: RedisProcess, shared: bool
) -> None:
    site = make_site(tmp_path)

    async def go() -> list[bytes]:
        async with daemon(site, redis.url if shared else None, "mx1") as mx:
            smtp = await Client.connect(mx.running.host_port)
            try:
                answers = []
                for n in range(8):  # MAIL, RCPT, RSET ... one after another, Postfix's instance each
                    answers.append(await smtp.ask(request(ROOMY, MESSAGE, client="203.0.113.7", instance=f"i{n}")))
                return answers
            finally:
                await smtp.close()

    answers = run(go())
    assert BUSY not in answers
    assert answers == [DUNNO] * 8, answers


class _Racing(RedisLedger):
    """Runs ``during_restore`` once, while the first write-back call is in flight."""

    during_restore: Callable[[], Awaitable[None]] | None = None

    async def _eval(self, keys: list[str], args: _Args) -> Any:
        result = await super()._eval(keys, args)
        hook, self.during_restore = self.during_restore, None
        if args[0] == "restore" and hook is not None:
            await hook()
        return result


def test_a_message_accepted_during_its_write_back_leaves_its_clients_share_free(
    tmp_path: Path, redis: RedisProcess
) -> None:
    site = make_site(tmp_path)
    data = site.data()

    async def go() -> list[bytes]:
        async with proxied(redis.host, redis.port) as proxy:
            data["shared"] = {
                "url": proxy.url,
                "node": "mx1",
                "timeout": 0.5,
                "retry_seconds": 0.1,
                "prefix": site.base.name,
            }
            config = parse_config(data)
            metrics = Metrics()
            service = site.service(config, metrics)
            local = SharedReservations(config.policy.reservation_seconds, config.policy.max_reservations)
            ledger = _Racing(config.shared, config.policy.reservation_seconds, local, metrics)
            local.ledger = ledger
            service.reservations = local
            service.shared = ledger
            await ledger.start()
            try:
                async with serving(config, service.respond, metrics) as running:

                    async def ask(data: bytes) -> bytes:
                        client = await Client.connect(running.host_port)
                        try:
                            return await client.ask(data)
                        finally:
                            await client.close()

                    proxy.cut()
                    assert await wait_until(lambda: not ledger.up, timeout=5)
                    answers = [await ask(rcpt(0))]  # held by this daemon alone
                    eom = request(ROOMY, MESSAGE, "END-OF-MESSAGE", client="192.0.2.1", instance="tx0")

                    async def accepted() -> None:
                        answers.append(await ask(eom))

                    ledger.during_restore = accepted
                    proxy.mend()
                    assert await wait_until(lambda: ledger.up and ledger.settled, timeout=10)
                    # The same client, a new message: its earlier one is in flight, not held.
                    answers.append(await ask(request(ROOMY, MESSAGE, client="192.0.2.1", instance="tx5")))
                    return answers
            finally:
                await ledger.close()

    assert run(go()) == [DUNNO, DUNNO, DUNNO]


CLIENT = "203.0.113.5"


def test_an_end_queued_during_a_long_partition_is_not_crowded_out_by_deliveries(
    tmp_path: Path, redis: RedisProcess
) -> None:
    site = make_site(tmp_path)

    async def go() -> list[bytes]:
        async with proxied(redis.host, redis.port) as proxy, daemon(site, proxy.url, "mx1") as mx:
            service, ledger, address = mx.service, mx.ledger, mx.running.host_port
            assert ledger is not None
            smtp = await Client.connect(address)
            answers = [await smtp.ask(request(ROOMY, MESSAGE, client=CLIENT, instance="t0"))]  # held in Redis
            proxy.cut()
            assert await wait_until(lambda: not ledger.up, timeout=5)
            # Transaction t0 ends without data (Exim's next MAIL; Postfix: a new instance).
            end = request(ROOMY, None, client=CLIENT, instance="t0").replace(
                b"request=smtpd_access_policy", b"request=quotagate_end"
            )
            answers.append(await smtp.ask(end))
            await smtp.close()
            # The partition lasts: the spool sees many deliveries (other mailboxes) meanwhile.
            for n in range(MAX_PENDING):
                service.delivered(f"user{n}@example.org")
            proxy.mend()
            assert await wait_until(lambda: ledger.up and ledger.settled, timeout=60)
            # Its transaction over, the client holds nothing: a new message of its own (on a new
            # connection) is let in.
            again = await Client.connect(address)
            try:
                answers.append(await again.ask(request(ROOMY, MESSAGE, client=CLIENT, instance="t1")))
            finally:
                await again.close()
            return answers

    assert run(go(), timeout=120) == [DUNNO, DUNNO, DUNNO]


@pytest.mark.parametrize("late", [False, True], ids=["reply in time", "reply after the timeout"])
def test_a_delivery_whose_reply_came_late_is_not_counted_twice(tmp_path: Path, redis: RedisProcess, late: bool) -> None:
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1") as mx, proxied(redis.host, redis.port) as proxy:
            # Two messages accepted: two reservations in flight (1000 used + 2 x 2000).
            answers = [await mx.ask(rcpt(n)) for n in range(2)]
            for n in range(2):
                eom = request(ROOMY, MESSAGE, "END-OF-MESSAGE", client=f"192.0.2.{n + 1}", instance=f"tx{n}")
                answers.append(await mx.ask(eom))
            assert mx.ledger is not None
            await wait_until(lambda: mx.ledger is not None and mx.ledger.settled)
            # The storage host reaches Redis over a slow link.
            data = site.data() | {
                "shared": {"url": proxy.url, "prefix": site.base.name, "timeout": 0.5, "retry_seconds": 0.1}
            }
            config = parse_config(data)
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                assert storage.up
                if late:
                    proxy.reply_delay = 1.0  # requests run at once, replies come after the timeout
                storage.delivered(ROOMY)  # ONE message landed
                if late:
                    assert await wait_until(lambda: not storage.up, timeout=5)
                    await asyncio.sleep(1.5)  # the late reply is in, Redis has the delivery
                    proxy.reply_delay = 0.0
                assert await wait_until(lambda: storage.up and storage.settled, timeout=10)
                await one_message_landed(storage, reading)
            finally:
                await storage.close()
            # Used 3000 and one message of 2000 still in flight: room for two more, not three.
            answers += [await mx.ask(rcpt(n)) for n in range(10, 13)]
            return answers

    answers = run(go(), timeout=60)
    assert answers[:4] == [DUNNO] * 4
    assert answers[4:] == [DUNNO, DUNNO, BUSY], answers[4:]


@pytest.mark.parametrize("skew", [0.0, -600.0], ids=["clocks agree", "mx 10 minutes behind"])
def test_an_mx_clock_behind_never_makes_an_old_reading_beat_a_fresher_one(
    tmp_path: Path, redis: RedisProcess, skew: float
) -> None:
    site = make_site(tmp_path)
    store = open_store(site.db_url)
    try:
        reading = store.readings()[ROOMY]  # 1000 bytes, measured by the storage host's clock
    finally:
        store.close()
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1", clock=lambda: time.time() + skew) as mx:
            answers = [await mx.ask(rcpt(n)) for n in range(2)]
            for n in range(2):  # both accepted: in flight
                eom = request(ROOMY, MESSAGE, "END-OF-MESSAGE", client=f"192.0.2.{n + 1}", instance=f"tx{n}")
                answers.append(await mx.ask(eom))
            await wait_until(lambda: mx.ledger is not None and mx.ledger.settled)
            # The storage host (its clock right) sees both land, then measures the mailbox.
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                for _ in range(2):
                    storage.delivered(ROOMY)
                await wait_until(lambda: storage.settled)
                landed = ROOMY_USED + 2 * MESSAGE
                storage.readings(
                    [msgspec.structs.replace(reading, bytes=landed, messages=3, measured_at=storage.clock())]
                )
                await wait_until(lambda: storage.settled)
            finally:
                await storage.close()
            # 5000 of 10000 used: room for two more messages of 2000, not three.
            answers += [await mx.ask(rcpt(n)) for n in range(10, 13)]
            return answers

    answers = run(go())
    assert answers[:4] == [DUNNO] * 4
    assert answers[4:] == [DUNNO, DUNNO, BUSY], answers[4:]


def _capped(tmp_path: Path, url: str | None) -> tuple[list[bytes], float]:
    site = make_site(tmp_path)
    data = site.data()
    if url is not None:
        data["shared"] = {"url": url, "node": "mx1", "timeout": 0.5, "retry_seconds": 0.1, "prefix": site.base.name}
    config = parse_config(data)

    async def go() -> tuple[list[bytes], float]:
        d = serve.Daemon(lambda: config)
        if d.shared is not None:
            await d.shared.start()
        try:
            await d.refresh()
            async with serving(d.service.config, d.service.respond, d.metrics) as running:
                answers = []
                for instance in ("one", "two"):  # one client, two transactions: its share is one message
                    client = await Client.connect(running.host_port)
                    try:
                        answers.append(
                            await client.ask(request(ROOMY, MESSAGE, client="203.0.113.9", instance=instance))
                        )
                    finally:
                        await client.close()
                d.housekeeping()  # what the daemon runs every few seconds
                return answers, running.sample("quotagate_policy_client_capped_total")
        finally:
            if d.shared is not None:
                await d.shared.close()
            d.service.files.close()
            d._forget_store()

    return run(go())


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "shared"])
def test_a_check_deferred_for_the_clients_share_is_counted(tmp_path: Path, redis: RedisProcess, shared: bool) -> None:
    answers, capped = _capped(tmp_path, redis.url if shared else None)
    assert answers == [DUNNO, BUSY], answers
    assert capped == 1, f"quotagate_policy_client_capped_total is {capped} after one capped check"


__all__ = ["redis"]


pytestmark = pytest.mark.servers


HOUR = 3600.0


def test_an_hour_old_storage_reading_in_redis_never_beats_the_stores_fresh_one(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """A storage host's watch wrote roomy@ full to Redis an hour ago, then stopped (the `use` key
    lives a day). Since, the mailbox was emptied to 1,000 bytes and a scan wrote that to the
    store, which the MX's snapshot holds (confirmed seconds ago). ledger.lua now takes Redis's
    `use` whenever the MX's usage is a store copy (own_clock 0), however old: the MX refuses a
    mailbox with 9,000 bytes of room, on usage an hour old, past max_usage_age (900 s), which
    the daemon alone would never believe. Before 66d4e74 the fresher reading won."""
    site = make_site(tmp_path)
    store = open_store(site.db_url)
    try:
        reading = store.readings()[ROOMY]  # 1000 of 10000 bytes, measured just now
    finally:
        store.close()
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})

    async def go() -> bytes:
        storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
        await storage.start()
        try:
            old = msgspec.structs.replace(reading, bytes=QUOTA, measured_at=storage.clock() - HOUR)
            storage.readings([old])
            await wait_until(lambda: storage.settled)
        finally:
            await storage.close()  # the watch stopped
        async with daemon(site, redis.url, "mx1") as mx:
            return await mx.ask(rcpt(0, 1000))

    assert run(go()) == DUNNO


pytestmark = pytest.mark.servers


CLIENT = "192.0.2.1"


STRANGER = "stranger@example.org"


def exim_data(recipient: str, size: int, instance: str) -> bytes:
    return (
        f"request=quotagate_data\nprotocol_state=END-OF-MESSAGE\nrecipient={recipient}\nsize={size}\n"
        f"size_added=0\nmessage_linecount=0\ninstance={instance}\nclient_address={CLIENT}\n\n"
    ).encode()


def accepted(instance: str, size: int) -> bytes:
    return (
        f"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsize={size}\n"
        f"size_added=0\nmessage_linecount=0\ninstance={instance}\nclient_address={CLIENT}\n\n"
    ).encode()


def end(instance: str) -> bytes:
    return f"request=quotagate_end\ninstance={instance}\nclient_address={CLIENT}\n\n".encode()


def test_shared_a_recipient_deferred_for_the_share_in_an_accepted_message_keeps_room_in_flight(
    tmp_path: Path, redis: RedisProcess
) -> None:
    site = make_site(tmp_path)
    message = 700
    room_left = QUOTA - ROOMY_USED - message  # once the accepted message lands

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1") as a:  # client_hold 10%: 1,000 bytes
            answers = [
                await a.ask(request(ROOMY, 400, instance="other")),
                await a.ask(request(ROOMY, 500, instance="tx")),
                await a.ask(request(STRANGER, 500, instance="tx")),
                await a.ask(exim_data(ROOMY, message, "tx")),  # 400 + 700 > 1,000: deferred
                await a.ask(exim_data(STRANGER, message, "tx")),  # DUNNO: Exim accepts the message
                await a.ask(accepted("tx", message)),
                await a.ask(end("other")),
            ]
            await wait_until(lambda: a.ledger is None or a.ledger.settled)
            # Another client wants one byte more than is left once the 700 bytes have landed.
            answers.append(await a.ask(request(ROOMY, room_left + 1, client="198.51.100.7", instance="late")))
            return answers

    answers = run(go())
    assert answers[3].startswith(b"action=452"), answers[3]
    assert answers[4] == b"action=DUNNO\n\n", answers[4]
    assert answers[-1] == BUSY, f"{answers[-1]!r}: the room of the message in flight to roomy was given away"


def test_the_real_size_goes_in_flight_in_redis_in_place_of_the_declared_one(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """A client declares SIZE=5000 and sends 700 bytes (Exim's router asked about the mailbox an
    alias reaches, which its DATA check never names): Exim's tell of the accepted message carries
    the real size, and the ledger's 'end' puts that in flight, not the declared 5,000."""
    site = make_site(tmp_path)
    client, instance = "198.51.100.9", "aliased"
    accepted = (
        f"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsize=700\nsize_added=0\n"
        f"message_linecount=0\ninstance={instance}\nclient_address={client}\n\n"
    ).encode()

    async def go() -> tuple[int, int]:
        async with daemon(site, redis.url, "mx1") as mx:
            assert await mx.ask(request(ROOMY, 5000, client=client, instance=instance)) == DUNNO
            held = _held_in_redis(redis, site.base.name)
            await mx.ask(accepted)
            assert mx.ledger is not None
            await wait_until(lambda: mx.ledger is not None and mx.ledger.settled)
            return held, _held_in_redis(redis, site.base.name)

    assert run(go()) == (5000, 700)


def _held_in_redis(redis: RedisProcess, prefix: str) -> int:
    admin = Redis.from_url(redis.url)
    try:
        return int(admin.hget(mailbox_keys(prefix, ROOMY)[1], "b") or 0)
    finally:
        admin.close()


async def one_message_landed(storage: RedisLedger, reading: Reading) -> None:
    """A storage host's reading of roomy that includes one message of MESSAGE bytes (and only
    it) more than ``reading``, taken now, sent to Redis."""
    storage.readings(
        [msgspec.structs.replace(reading, bytes=ROOMY_USED + MESSAGE, messages=2, measured_at=storage.clock())]
    )
    await wait_until(lambda: storage.settled)


def _entries(url: str, prefix: str, mailbox: str) -> dict[str, dict[str, Any]]:
    """The reservations Redis holds for ``mailbox``, as the script keeps them."""
    admin = Redis.from_url(url)
    try:
        raw = admin.hgetall(mailbox_keys(prefix, mailbox)[0])
        return {str(k): json.loads(v) for k, v in raw.items()}
    finally:
        admin.close()


def eom(n: int) -> bytes:
    return request(ROOMY, MESSAGE, "END-OF-MESSAGE", client=f"192.0.2.{n + 1}", instance=f"tx{n}")


def test_one_delivery_seen_during_an_outage_releases_one_message_not_two(tmp_path: Path, redis: RedisProcess) -> None:
    """Scenario: tx0 is accepted while Redis is up (in flight in Redis). Redis goes away; tx1
    is accepted by the daemon alone (in flight locally). ONE message lands and the daemon's
    watch sees it. Redis comes back: the queued delivery is replayed (marking tx0 delivered in
    Redis) and then tx1's room is written back with its local 'delivered' mark too; a reading
    that includes that one message then released both reservations.
    Expected: one delivery marks exactly one reservation delivered in Redis; with 3,000 bytes
    used and one 2,000-byte message still in flight, two more messages of 2,000 fit, not three."""
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)
    prefix = site.base.name

    async def go() -> tuple[list[bytes], int]:
        async with proxied(redis.host, redis.port) as proxy, daemon(site, proxy.url, "mx1") as mx:
            ledger = mx.ledger
            assert ledger is not None
            answers = [await mx.ask(rcpt(0)), await mx.ask(eom(0))]  # in flight in Redis
            await wait_until(lambda: ledger.settled)
            proxy.cut()
            assert await wait_until(lambda: not ledger.up, timeout=5)
            answers += [await mx.ask(rcpt(1)), await mx.ask(eom(1))]  # in flight here alone
            mx.service.delivered(ROOMY)  # ONE message landed
            proxy.mend()
            assert await wait_until(lambda: ledger.up and ledger.settled, timeout=10)
            marked = sum(1 for r in _entries(redis.url, prefix, ROOMY).values() if r.get("d"))
            config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": prefix}})
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                await one_message_landed(storage, reading)
            finally:
                await storage.close()
            answers += [await mx.ask(rcpt(n)) for n in range(10, 13)]
            return answers, marked

    answers, marked = run(go(), timeout=60)
    assert answers[:4] == [DUNNO] * 4, answers
    assert answers[4:] == [DUNNO, DUNNO, BUSY], (answers[4:], f"{marked} reservations marked delivered")


def test_redis_restarted_empty_while_away_is_said_as_room_lost(
    tmp_path: Path, redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario: an MX holds room in Redis for an accepted RCPT. Redis crashes (no persistence,
    as docs/scaling.md's default) and is started again empty; the daemon notices the outage
    and then uses Redis again. The room it (and every other MX) held there is gone.
    Expected: the log says that Redis restarted and the room it held is lost, as the heartbeat
    says for a restart seen between two calls. It only said "unavailable", then "in use: 0
    changes replayed, 0 reservations written back": the loss was silent when the restart was
    first seen as an outage."""
    site = make_site(tmp_path)
    caplog.set_level(logging.INFO, logger="quotagate")

    async def go() -> tuple[bytes, int, int]:
        async with daemon(site, redis.url, "mx1") as mx:
            ledger = mx.ledger
            assert ledger is not None
            answer = await mx.ask(rcpt(0))
            before = held_bytes(redis.url, site.base.name, ROOMY)
            redis.kill()
            try:
                assert await wait_until(lambda: not ledger.up, timeout=5)
            finally:
                redis.start()
            assert await wait_until(lambda: ledger.up and ledger.settled, timeout=10)
            return answer, before, held_bytes(redis.url, site.base.name, ROOMY)

    answer, before, after = run(go())
    assert (answer, before, after) == (DUNNO, MESSAGE, 0)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "lost" in r.getMessage()]
    assert said, "Redis came back empty and the room held there was lost without a word: " + repr(
        [r.getMessage() for r in caplog.records if r.name.startswith("quotagate.policy.shared")]
    )


def test_a_redis_set_to_evict_while_in_use_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Scenario: the daemon starts on a Redis with noeviction. Later the Redis is given
    maxmemory and maxmemory-policy allkeys-lru (an admin's CONFIG SET, a managed service's
    parameter change applied live); the daemon keeps using it, checks and heartbeats go on
    (here 20 heartbeats, retry_seconds 0.1, and checks).
    Expected: README: "a Redis that may evict is said once a minute". It was looked at only
    when the daemon (re)connected after an outage: a Redis that may evict keys from then on was
    never said while it stayed reachable."""
    site = make_site(tmp_path)
    with private_redis() as server:

        async def go() -> list[bytes]:
            async with daemon(site, server.url, "mx1") as mx:
                admin = Redis(host=server.host, port=server.port)
                try:
                    admin.config_set("maxmemory", str(256 * 1024 * 1024))
                    admin.config_set("maxmemory-policy", "allkeys-lru")
                finally:
                    admin.close()
                assert mx.ledger is not None
                mx.ledger._memory_due = 0.0  # its minute is up (the first heartbeat may have looked already)
                answers = []
                for n in range(4):
                    answers.append(await mx.ask(rcpt(n)))
                    await asyncio.sleep(0.5)
                return answers

        with caplog.at_level(logging.WARNING, logger="quotagate.policy.shared"):
            answers = run(go(), timeout=60)
    assert answers == [DUNNO] * 4
    assert "maxmemory-policy allkeys-lru" in caplog.text, "a Redis that may now evict held room was never said"
