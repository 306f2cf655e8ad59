"""Two policy services sharing one private Redis ([shared] url): a burst split between them lets
in exactly what fits, transaction ends and deliveries reach both, a storage host's reading changes
both answers at once, and Redis killed under them makes each decide alone (failing open), then
exact again once it is back with the room they held alone written back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from redis import Redis

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy.metrics import Metrics
from quotagate.policy.reservations import Reservations
from quotagate.policy.service import PolicyService
from quotagate.policy.shared import RedisLedger, _Op, attach, mailbox_keys
from quotagate.store import open_store
from tests.policy.conftest import (
    BUSY,
    DUNNO,
    QUOTA,
    REJECT,
    ROOMY,
    ROOMY_USED,
    Client,
    Running,
    Site,
    make_site,
    request,
    run,
    serving,
    too_big,
    wait_until,
)
from tests.policy.test_data_cap import STRANGER, accepted
from tests.policy.test_data_stage import exim_data
from tests.policy.test_lowered_folders import ARCHIVE_RULE, MAILBOX, exim_rcpt, maildir, rescan
from tests.policy.transactions import FITS, MESSAGE, rcpt
from tests.servers.redis import RedisProcess, private_redis
from tests.spoolgen import add_message, maildir_folder

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    with private_redis() as server:
        yield server


@dataclass
class Daemon:
    """One policy service with its ledger behind a server: what ``quotagate serve`` puts together."""

    service: PolicyService
    ledger: RedisLedger | None
    running: Running

    async def ask(self, data: bytes) -> bytes:
        client = await Client.connect(self.running.host_port)
        try:
            return await client.ask(data)
        finally:
            await client.close()

    def up(self) -> float:
        return self.running.sample("quotagate_shared_up")


@contextlib.asynccontextmanager
async def daemon(
    site: Site,
    url: str | None,
    node: str,
    clock: Callable[[], float] | None = None,
    folders: Sequence[Mapping[str, object]] | None = None,
    spool: Mapping[str, object] | None = None,
    **policy: object,
) -> AsyncIterator[Daemon]:
    """``clock``: the host's own, when it is not right; ``folders``: [[folders]] rules;
    ``spool``: [spool] settings besides the site's."""
    data = site.data(**policy)
    if folders:
        data["folders"] = [dict(rule) for rule in folders]
    data["spool"].update(spool or {})
    if url is not None:
        # One key space per test, shared by its daemons.
        data["shared"] = {"url": url, "node": node, "timeout": 0.5, "retry_seconds": 0.1, "prefix": site.base.name}
    metrics = Metrics()
    service = site.service(parse_config(data), metrics)
    if clock is not None:
        service.clock = clock
    ledger = attach(service, metrics)
    if ledger is not None:
        if clock is not None:
            ledger.clock = clock
        await ledger.start()
    try:
        async with serving(service.config, service.respond, metrics) as running:
            yield Daemon(service, ledger, running)
    finally:
        if ledger is not None:
            await ledger.close()


@contextlib.asynccontextmanager
async def two(site: Site, url: str | None, *, one_host: bool = False) -> AsyncIterator[tuple[Daemon, Daemon]]:
    """Two daemons on two MX hosts, or two of one host (its workers: one node name)."""
    async with daemon(site, url, "mx1") as a, daemon(site, url, "mx1" if one_host else "mx2") as b:
        yield a, b


async def burst(a: Daemon, b: Daemon, count: int = 10) -> list[bytes]:
    """``count`` checks at once, every other one through each daemon."""
    return list(await asyncio.gather(*((a if n % 2 else b).ask(rcpt(n)) for n in range(count))))


def test_alone_two_daemons_let_in_twice_what_fits(tmp_path: Path) -> None:
    """The attack [shared] answers: each daemon weighs only the room it holds itself."""
    site = make_site(tmp_path)

    async def go() -> list[bytes]:
        async with two(site, None) as (a, b):
            return await burst(a, b)

    assert run(go()).count(DUNNO) == 2 * FITS


def test_a_burst_split_between_two_daemons_lets_in_exactly_what_fits(tmp_path: Path, redis: RedisProcess) -> None:
    site = make_site(tmp_path)

    async def go() -> tuple[list[bytes], list[bytes]]:
        async with two(site, redis.url) as (a, b):
            first = await burst(a, b)
            again = [await a.ask(rcpt(20)), await b.ask(rcpt(21))]
            return first, again

    first, again = run(go())
    # Held room stands in the others' way: deferred (452), not refused for good.
    assert first.count(DUNNO) == FITS and first.count(BUSY) == 10 - FITS, first
    assert again == [BUSY, BUSY]


@pytest.mark.parametrize("one_host", [False, True], ids=["two hosts", "two workers of one host"])
def test_a_transaction_that_ends_without_data_frees_its_room_for_every_daemon(
    tmp_path: Path, redis: RedisProcess, one_host: bool
) -> None:
    site = make_site(tmp_path)

    async def go() -> list[bytes]:
        async with two(site, redis.url, one_host=one_host) as (a, b):
            answers = list(await burst(a, b, FITS))
            answers.append(await a.ask(rcpt(10)))  # full of held room: deferred
            # Transaction 0 (held through b) ends without data (Exim's next MAIL): told to b, or
            # to another worker of its host.
            end = request(ROOMY, None, client="192.0.2.1", instance="tx0").replace(
                b"request=smtpd_access_policy", b"request=quotagate_end"
            )
            told = a if one_host else b
            answers.append(await told.ask(end))
            await wait_until(lambda: told.ledger is None or told.ledger.settled)
            answers.append(await a.ask(rcpt(11)))
            return answers

    answers = run(go())
    assert answers[:FITS] == [DUNNO] * FITS
    assert answers[FITS:] == [BUSY, DUNNO, DUNNO]


def test_room_in_flight_stays_until_a_storage_host_sees_the_delivery(tmp_path: Path, redis: RedisProcess) -> None:
    """Accepted messages stay held (in flight) for both daemons; a storage host's watch seeing
    them land and measuring the mailbox lets both see the measured usage instead, at once."""
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})

    async def go() -> list[bytes]:
        async with two(site, redis.url) as (a, b):
            answers = list(await burst(a, b, FITS))
            for n in range(FITS):  # every message accepted: in flight
                eom = request(ROOMY, MESSAGE, "END-OF-MESSAGE", client=f"192.0.2.{n + 1}", instance=f"tx{n}")
                answers.append(await (a if n % 2 else b).ask(eom))
            await wait_until(lambda: all(d.ledger is None or d.ledger.settled for d in (a, b)))
            answers.append(await a.ask(rcpt(10)))  # still held: deferred
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                for _ in range(FITS):
                    storage.delivered(ROOMY)
                await wait_until(lambda: storage.settled)  # seen before the reading is taken
                now = storage.clock()
                landed = ROOMY_USED + FITS * MESSAGE
                storage.readings([msgspec.structs.replace(reading, bytes=landed, messages=1 + FITS, measured_at=now)])
                await wait_until(lambda: storage.settled)
            finally:
                await storage.close()
            answers.append(await b.ask(rcpt(11)))  # the reading includes them: still full
            answers.append(await a.ask(rcpt(12, QUOTA - landed)))  # exactly what is left
            return answers

    answers = run(go())
    assert answers[:FITS] == [DUNNO] * FITS
    assert answers[FITS:] == [DUNNO] * FITS + [BUSY, too_big(MESSAGE), DUNNO]


def test_small_mail_the_daemons_never_let_in_frees_no_room_of_a_message_in_flight(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: four 2,000-byte messages are in flight in the ledger when four 100-byte ones that
    never went through the daemons land (cron's mail), their size in their names, and a storage
    host's reading includes them.
    Expected: the four messages' room stays held for both daemons (a check for another 2,000
    bytes is deferred, exactly what is left still fits); before, each small delivery let the
    next reading release a 2,000-byte message still on its way."""
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})
    small = 100

    async def go() -> list[bytes]:
        async with two(site, redis.url) as (a, b):
            answers = list(await burst(a, b, FITS))
            for n in range(FITS):
                eom = request(ROOMY, MESSAGE, "END-OF-MESSAGE", client=f"192.0.2.{n + 1}", instance=f"tx{n}")
                answers.append(await (a if n % 2 else b).ask(eom))
            await wait_until(lambda: all(d.ledger is None or d.ledger.settled for d in (a, b)))
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                for _ in range(FITS):
                    storage.delivered(ROOMY, small)
                await wait_until(lambda: storage.settled)
                landed = ROOMY_USED + FITS * small
                now = storage.clock()
                storage.readings([msgspec.structs.replace(reading, bytes=landed, messages=1 + FITS, measured_at=now)])
                await wait_until(lambda: storage.settled)
            finally:
                await storage.close()
            answers.append(await b.ask(rcpt(10)))
            answers.append(await a.ask(rcpt(11, QUOTA - landed - FITS * MESSAGE)))
            return answers

    answers = run(go())
    assert answers == [DUNNO] * (2 * FITS) + [BUSY, DUNNO]


def test_a_delivery_of_known_size_releases_the_message_nearest_it_in_the_ledger(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: a 1,000-byte and a 3,000-byte message in flight in the ledger; a storage host
    sees a delivery of 2,900 bytes (the larger one, its line ends counted otherwise) and takes
    a reading that includes it.
    Expected: the 3,000 bytes are released, the 1,000 kept: exactly the room left beside them
    is let in, a byte more deferred."""
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})
    sizes, landed = (1_000, 3_000), 2_900

    async def go() -> list[bytes]:
        async with two(site, redis.url) as (a, b):
            answers = []
            for n, size in enumerate(sizes):  # one through each MX
                mx = a if n % 2 else b
                answers.append(await mx.ask(rcpt(n, size)))
                eom = request(ROOMY, size, "END-OF-MESSAGE", client=f"192.0.2.{n + 1}", instance=f"tx{n}")
                answers.append(await mx.ask(eom))
            await wait_until(lambda: all(d.ledger is None or d.ledger.settled for d in (a, b)))
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                storage.delivered(ROOMY, landed)
                await wait_until(lambda: storage.settled)
                now = storage.clock()
                used = ROOMY_USED + landed
                storage.readings([msgspec.structs.replace(reading, bytes=used, messages=2, measured_at=now)])
                await wait_until(lambda: storage.settled)
            finally:
                await storage.close()
            left = QUOTA - used - sizes[0]
            answers.append(await b.ask(rcpt(10, left + 1)))
            answers.append(await a.ask(rcpt(11, left)))
            return answers

    assert run(go()) == [DUNNO] * 4 + [BUSY, DUNNO]


def test_two_recipients_of_one_mailbox_in_one_transaction_must_fit_together_in_the_ledger(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """As the daemon's own ledger: ``user+a`` and ``user+b`` may be two copies."""
    site = make_site(tmp_path)
    local, domain = ROOMY.split("@")

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1", client_hold="100%") as a:
            return [await a.ask(request(f"{local}+{x}@{domain}", 6000, instance="s0")) for x in "ab"]

    assert run(go()) == [DUNNO, BUSY]


def test_each_copy_of_a_message_for_one_mailbox_is_held_apart_in_the_ledger(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Attack: one transaction names one mailbox under detail after detail (``roomy+a``,
    ``roomy+b``, ``roomy+c``, SIZE=4000, 9000 of room), each a copy of its own. Two copies are
    held, the third does not fit, another client sees both held, and the transaction's end lets
    both go. (Held under one key, each new detail replaced the last: every one was let in.)"""
    site = make_site(tmp_path)
    local, domain = ROOMY.split("@")
    other = "198.51.100.9"

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1", client_hold="100%") as a:
            answers = [await a.ask(request(f"{local}+{x}@{domain}", 4000, instance="s0")) for x in "abc"]
            answers.append(await a.ask(request(ROOMY, 1001, client=other, instance="o1")))
            end = request(ROOMY, None, instance="s0").replace(b"request=smtpd_access_policy", b"request=quotagate_end")
            answers.append(await a.ask(end))
            await wait_until(lambda: a.ledger is None or a.ledger.settled)
            answers.append(await a.ask(request(ROOMY, QUOTA - ROOMY_USED, client=other, instance="o2")))
            return answers

    assert run(go()) == [DUNNO, DUNNO, BUSY, BUSY, DUNNO, DUNNO]


def test_a_reading_from_a_storage_host_changes_both_answers(tmp_path: Path, redis: RedisProcess) -> None:
    site = make_site(tmp_path)
    reading = site.reading(ROOMY)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})

    async def go() -> list[bytes]:
        async with two(site, redis.url) as (a, b):
            answers = [await a.ask(rcpt(0, 1)), await b.ask(rcpt(1, 1))]
            storage = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0))
            await storage.start()
            try:
                full = msgspec.structs.replace(reading, bytes=QUOTA, measured_at=storage.clock())
                storage.readings([full])
                await wait_until(lambda: storage.settled)
            finally:
                await storage.close()
            return [*answers, await a.ask(rcpt(2, 1)), await b.ask(rcpt(3, 1))]

    assert run(go()) == [DUNNO, DUNNO, REJECT, REJECT]


def test_redis_killed_both_decide_alone_and_are_exact_again_once_it_is_back(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with private_redis() as redis:

        async def go() -> None:
            async with two(site, redis.url) as (a, b):
                assert (a.up(), b.up()) == (1, 1)
                assert await a.ask(rcpt(0)) == DUNNO  # held in Redis
                redis.kill()
                # Fail open: each decides with its own reservations and the store's usage.
                during = [await a.ask(rcpt(1)), await b.ask(rcpt(2)), await a.ask(rcpt(3)), await b.ask(rcpt(4))]
                assert during == [DUNNO] * 4
                assert (a.up(), b.up()) == (0, 0)
                redis.start()  # empty: what it held is lost
                assert await wait_until(lambda: a.up() == 1 and b.up() == 1, timeout=10)
                # The four held alone were written back: with them, the mailbox is full again.
                assert [await a.ask(rcpt(5)), await b.ask(rcpt(6))] == [BUSY, BUSY]
                assert len(a.service.reservations) == len(b.service.reservations) == 0

        run(go())


def test_releasing_everything_stays_within_the_daemons_prefix(tmp_path: Path, redis: RedisProcess) -> None:
    """Other hosts sharing the Redis under another prefix keep their room."""
    ours, theirs = make_site(tmp_path / "ours"), make_site(tmp_path / "theirs")

    async def go() -> tuple[int, bytes, bytes]:
        async with daemon(ours, redis.url, "mx1") as a, daemon(theirs, redis.url, "mx1") as b:
            for n in range(FITS):
                assert [await a.ask(rcpt(n)), await b.ask(rcpt(n))] == [DUNNO, DUNNO]
            assert a.ledger is not None
            released = await a.ledger.release(None)
            return released, await a.ask(rcpt(10)), await b.ask(rcpt(10))

    assert run(go()) == (FITS, DUNNO, BUSY)


def test_a_redis_that_lost_the_script_is_given_it_again(tmp_path: Path, redis: RedisProcess) -> None:
    """Redis forgets its scripts when it restarts, or fails over to a replica that never loaded
    them: the next call, alone or in a pipeline, loads it again, and Redis is not taken for away."""
    site = make_site(tmp_path)
    admin = Redis.from_url(redis.url)

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1") as a:
            answers = []
            for n in range(FITS):
                admin.script_flush()
                answers.append(await a.ask(rcpt(n)))  # held: the script and the index in a pipeline
            admin.script_flush()
            answers.append(await a.ask(request(ROOMY, None, client="192.0.2.99", instance="x")))  # alone
            answers.append(await a.ask(rcpt(10)))
            assert a.up() == 1
            return answers

    try:
        assert run(go()) == [DUNNO] * (FITS + 1) + [BUSY]
    finally:
        admin.close()


class _Swallowing(RedisLedger):
    """A ledger whose calls to Redis turn a cancellation into a connection error, as redis-py
    may when the cancellation meets one of its own timeouts or a connection it closes; with
    ``stall``, a call waits for an answer that does not come."""

    stall = False
    swallowed = False  # once: a test that fails ends rather than hangs

    async def _server_run(self) -> str:
        try:
            if self.stall:
                await asyncio.sleep(3600)
            return await super()._server_run()
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
            raise ConnectionError("cancelled mid-call") from None


def test_a_ledger_closes_even_when_a_call_swallowed_its_cancellation(tmp_path: Path, redis: RedisProcess) -> None:
    """``quotagate watch`` and ``serve`` hung at SIGTERM after an outage: their heartbeat went on
    beating once a cancellation had been turned into an error it outlives."""
    site = make_site(tmp_path)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "retry_seconds": 0.01}})

    async def go() -> None:
        ledger = _Swallowing(config.shared, 600, Reservations(0))
        await ledger.start()
        ledger.stall = True
        await asyncio.sleep(0.1)  # the heartbeat is inside its call
        await asyncio.wait_for(ledger.close(), 5)

    run(go())


def test_a_check_the_ledger_cannot_weigh_is_decided_alone_at_once(
    tmp_path: Path, redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of ours while a batch of checks is put together (not Redis's) must not leave the
    batch's requests waiting until the MTA gives up: each is decided alone, at once."""
    site = make_site(tmp_path)

    def broken(*_: object) -> list[str | int]:
        raise RuntimeError("a bug")

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1") as a:
            monkeypatch.setattr("quotagate.policy.shared.check_args", broken)
            return list(await asyncio.wait_for(asyncio.gather(a.ask(rcpt(0)), a.ask(rcpt(1))), timeout=5))

    assert run(go()) == [DUNNO, DUNNO]


def test_a_change_the_script_refuses_is_dropped_and_redis_stays_in_use(tmp_path: Path, redis: RedisProcess) -> None:
    """A change Redis's script refuses (a bug of ours) fails the same way every time: kept for a
    replay it would keep Redis taken for away forever. It is dropped, counted and said."""
    site = make_site(tmp_path)
    config = parse_config(site.data() | {"shared": {"url": redis.url, "prefix": site.base.name}})
    metrics = Metrics()

    async def go() -> tuple[bool, float]:
        ledger = RedisLedger(config.shared, config.policy.reservation_seconds, Reservations(0), metrics)
        await ledger.start()
        try:
            ledger._send(_Op("no such change", ROOMY))
            ledger.delivered(ROOMY)  # in the same pipeline: still applied
            await wait_until(lambda: ledger.settled)
            return ledger.up, metrics.registry.get_sample_value("quotagate_shared_errors_total") or 0.0
        finally:
            await ledger.close()

    assert run(go()) == (True, 1.0)


def site_with_a_big_roomy(tmp_path: Path) -> Site:
    """A site whose roomy has a limit of 1,000,000 bytes: room for folders with limits of their own."""
    site = make_site(tmp_path)
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(1_000_000))])
    finally:
        store.close()
    return site


def test_a_folders_own_share_and_room_are_weighed_per_folder_in_the_ledger(tmp_path: Path, redis: RedisProcess) -> None:
    """roomy (a mailbox of 1,000,000 bytes) has a folder Archive with a limit of 10,000 of its
    own: one client may hold 1,000 of it. Room the client holds for the mailbox itself does not
    count against the folder's share, nor against the folder's room (90,000 held for INBOX
    would otherwise shut Archive for every client); what it holds for roomy+Archive does, under
    any spelling (Roomy+Archive is another copy, but the same folder); another client has a
    share of its own."""
    site = site_with_a_big_roomy(tmp_path)
    archive = ROOMY.replace("@", "+Archive@")

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1", folders=[{"match": "Archive", "quota": "10000"}]) as a:
            return [
                await a.ask(request(ROOMY, 90_000, client="203.0.113.5", instance="t1")),
                await a.ask(request(archive, 500, client="203.0.113.5", instance="t2")),
                await a.ask(request("R" + archive[1:], 600, client="203.0.113.5", instance="t3")),  # 1,100
                await a.ask(request(archive, 600, client="198.51.100.1", instance="o1")),
                await a.ask(request(archive, 8_900, client="192.0.2.9", instance="o2")),  # 1,100 held: 10,000
                await a.ask(request(archive, 1, client="192.0.2.10", instance="o3")),  # past the folder's room
            ]

    assert run(go()) == [DUNNO, DUNNO, BUSY, DUNNO, DUNNO, BUSY]


def test_sums_a_ledger_of_another_version_left_behind_hold_no_room(tmp_path: Path, redis: RedisProcess) -> None:
    """Scenario: during an upgrade, an MX host running another version of the ledger's script
    lets go of a reservation the new one wrote for roomy+Archive (its expiry swept by a check of
    the mailbox) and, counting it otherwise, takes it out of the mailbox's sums only: the sums
    of the folder (and of its client's share in it) stay, renewed by every call on the mailbox.

    Expected: room nobody holds is not weighed: the folder's sums are a part of what the
    mailbox holds, never more, and go when nothing is held; 6,000 bytes into the empty
    10,000-byte folder are let in (and never a 552 for held room)."""
    site = site_with_a_big_roomy(tmp_path)
    archive = ROOMY.replace("@", "+Archive@")
    client = Redis(host=redis.host, port=redis.port, password=redis.password or None)
    res, sums = mailbox_keys(site.base.name, ROOMY)[:2]

    async def go() -> tuple[bytes, bytes]:
        async with daemon(site, redis.url, "mx1", folders=[{"match": "Archive", "quota": "10000"}]) as a:
            held = await a.ask(request(archive, 5_000, client="203.0.113.5", instance="t1"))
            for tx, raw in client.hgetall(res).items():  # let go as the other version's script does
                client.hdel(res, tx)
                client.hincrby(sums, "b", -msgspec.json.decode(raw)["b"])
                client.hincrby(sums, "m", -1)
            assert client.hget(sums, "fb:archive") is not None  # left behind (keyed with A-Z lowered)
            return held, await a.ask(request(archive, 6_000, client="198.51.100.1", instance="o1"))

    assert run(go()) == (DUNNO, DUNNO)


def test_room_held_for_a_folder_before_it_exists_counts_once_it_is_created(tmp_path: Path, redis: RedisProcess) -> None:
    """Rule ``Archive`` (10,000 bytes), roomy has no ``.Archive`` yet; through Exim two clients
    each hold 4,000 bytes in the shared ledger for ``roomy+Archive@`` (asked as
    ``roomy+archive``). ``.Archive`` is then created, empty, and the daemon's snapshot refreshed;
    a third client asks for 4,000 bytes: the room held before counts (8,000 + 4,000 > 10,000: 452)."""
    site = make_site(tmp_path)
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(MAILBOX))])
    finally:
        store.close()

    async def go(url: str) -> list[bytes]:
        async with daemon(site, url, "mx1", folders=[ARCHIVE_RULE]) as a:
            first = [
                await a.ask(exim_rcpt("roomy+archive", 4_000, "t1", "192.0.2.1")),
                await a.ask(exim_rcpt("roomy+archive", 4_000, "t2", "192.0.2.2")),
            ]
            maildir_folder(maildir(site), "Archive")
            rescan(site, a.service)
            return [*first, await a.ask(exim_rcpt("roomy+archive", 4_000, "t3", "192.0.2.3"))]

    answers = run(go(redis.url))
    assert answers[:2] == [b"action=DUNNO\n\n"] * 2, answers
    assert answers[2].startswith(b"action=452"), answers


def test_a_size_no_double_holds_exactly_breaks_no_shared_count(tmp_path: Path, redis: RedisProcess) -> None:
    """Scenario: a mailbox limited to 10 messages (no byte limit) holds 1; the MTA has no
    message_size_limit. A hostile client's RCPT declares SIZE=10^17 through one MX host, then
    ten other clients ask through both.
    Expected: the size counts as 2**53 - 1 (the most Redis's Lua numbers, doubles, hold
    exactly; more than any mailbox takes): held as one message, no check fails in the script;
    eight others fit and the last two are deferred. Held as 10^17, its HINCRBY of 1e+17 failed
    halfway through the script: the reservation written, never counted, the sums wrong on every
    MX."""
    counted = "counted@example.org"
    site = make_site(tmp_path)
    add_message(maildir_folder(site.spool / "example.org" / "counted" / "Maildir"), 500)
    with open_store(site.db_url) as store:
        store.upsert_mailboxes([Mailbox(counted, Limits(0, 10))])
    site.rescan()

    async def go() -> tuple[list[bytes], float]:
        async with two(site, redis.url) as (a, b):
            answers = [await a.ask(request(counted, 10**17, client="198.51.100.66", instance="huge"))]
            for n in range(10):
                daemon = a if n % 2 else b
                answers.append(await daemon.ask(request(counted, 1000, client=f"192.0.2.{n + 1}", instance=f"t{n}")))
            return answers, sum(d.running.sample("quotagate_shared_errors_total") for d in (a, b))

    answers, errors = run(go())
    assert answers == [DUNNO] * 9 + [BUSY] * 2, answers
    assert errors == 0


def _end_of(instance: str, client: str) -> bytes:
    """What Exim's quotagate_end sends when the client's next MAIL or QUIT comes."""
    return f"request=quotagate_end\ninstance={instance}\nclient_address={client}\n\n".encode()


def test_a_copy_refused_at_data_for_room_others_hold_goes_in_flight_in_the_ledger(
    tmp_path: Path, redis: RedisProcess
) -> None:
    """Scenario: roomy has 9,000 bytes free and two other clients hold 4,000 each before DATA.
    Through Exim without PRDR, a third client sends 6,000 bytes without SIZE= to roomy and to a
    recipient quotagate does not know: roomy is refused at DATA only for the room the others
    hold, the message is accepted for the other recipient, and roomy's copy lands too. The
    others quit.
    Expected: as with the daemon's own ledger, that copy's 6,000 bytes are in flight in Redis:
    a 3,001-byte message no longer fits. (Before, Redis held nothing for it and let it in.)"""
    site = make_site(tmp_path)
    others = ["198.51.100.1", "198.51.100.2"]

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1", client_hold="100%") as a:
            answers = [await a.ask(request(ROOMY, 4000, client=c, instance=f"o{n}")) for n, c in enumerate(others)]
            answers.append(await a.ask(exim_data(ROOMY, 6000, instance="A")))
            answers.append(await a.ask(exim_data(STRANGER, 6000, instance="A")))
            answers.append(await a.ask(accepted("A", 6000)))
            answers += [await a.ask(_end_of(f"o{n}", c)) for n, c in enumerate(others)]
            await wait_until(lambda: a.ledger is None or a.ledger.settled)
            answers.append(await a.ask(request(ROOMY, 3001, client="203.0.113.9", instance="late")))
            answers.append(await a.ask(request(ROOMY, 3000, client="203.0.113.9", instance="fits")))
            return answers

    answers = run(go())
    assert answers[:2] == [DUNNO, DUNNO] and answers[2] != DUNNO and answers[3:7] == [DUNNO] * 4, answers
    assert answers[7:] == [BUSY, DUNNO], answers


def test_a_copy_capped_at_data_still_goes_in_flight_in_the_ledger(tmp_path: Path, redis: RedisProcess) -> None:
    """Scenario: one client may hold 1,000 bytes of roomy (client_hold 10%); without SIZE= it
    sends one 700-byte message to roomy+a and roomy+b through Exim without PRDR: the second copy
    passes its share at DATA and is deferred, but the message is accepted and both land.
    Expected: 1,400 bytes in flight in Redis (a message of the room left less 1,400 fits, one
    byte more does not). (Before, only the first copy's 700 were.)"""
    site = make_site(tmp_path)
    local, domain = ROOMY.split("@")
    room = QUOTA - ROOMY_USED

    async def go() -> list[bytes]:
        async with daemon(site, redis.url, "mx1") as a:
            answers = [await a.ask(exim_data(f"{local}+{tag}@{domain}", 700, instance="tx")) for tag in "ab"]
            answers.append(await a.ask(accepted("tx", 700)))
            await wait_until(lambda: a.ledger is None or a.ledger.settled)
            for n, size in enumerate((room - 1400 + 1, room - 1400)):
                answers.append(await a.ask(request(ROOMY, size, client="203.0.113.9", instance=f"x{n}")))
            return answers

    answers = run(go())
    assert answers[0] == DUNNO and answers[1] != DUNNO and answers[2] == DUNNO, answers
    assert answers[3:] == [BUSY, DUNNO], answers
