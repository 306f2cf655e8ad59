"""Reservations and live usage shared through Redis (``[shared] url``), for several daemons and
several MX hosts in front of one set of mailboxes.

Every change to a mailbox's reservations is one call of one Lua script (``data/ledger.lua``) on
that mailbox's keys, which all carry the mailbox as hash tag (``quotagate:{a@b}:res``): Redis runs
it atomically, so two hosts checking the same mailbox at once cannot both take its last room. A
Redis Cluster node is refused (a transaction's keys span slots). Times are Redis's own (``TIME``
in the script); the hosts send ages, never their clocks. A storage host's ``quotagate watch``
writes each mailbox's usage (and each delivery it sees) there too, so every MX weighs the
freshest usage within one flush.

Redis away (down, failing over, too slow): the daemon decides with its own reservations, as
without ``[shared]``, says so once, sets ``quotagate_shared_up`` to 0, and tries Redis again every
``retry_seconds``. Back, it first replays the transaction ends and deliveries it saw meanwhile
(kept beside the state file: a restart meanwhile replays them still), then writes back the room
it held alone (never room Redis let go of since, nor room whose transaction ended on another
daemon of the host meanwhile), then uses Redis again. Nothing is refused because Redis
is away; what that costs (room over-accepted while it was) is bounded in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quotagate.config import SharedConfig
from quotagate.decide import Ceiling, Reserved
from quotagate.model import Reading, State
from quotagate.policy import state
from quotagate.policy.claim import SHARED_SOURCE, Claim, Weighed, client_caps
from quotagate.policy.control import MAX_LISTED, SharedUnavailable
from quotagate.policy.metrics import Metrics
from quotagate.policy.reservations import Reservation, Reservations, Transaction, delivery_most
from quotagate.policy.throttle import Throttled
from quotagate.sharedurl import SharedUrl

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from quotagate.policy.service import PolicyService

log = logging.getLogger(__name__)

# Keys of a mailbox outlive its last reservation by this much (they go once it is quiet).
_MARGIN_MS = 60_000
# A mailbox's usage as a storage host measured it stays this long without a new reading; the
# store's (which the watch writes too) is used after.
_USAGE_MS = 86_400_000
# Transaction ends and deliveries kept while Redis is away, replayed when it is back.
MAX_PENDING = 100_000
_REPLAY_BATCH = 1000  # of them in one pipeline
_OWED_SECONDS = 5.0  # how often, at most, they are written beside the state file while Redis is away
EVICTION_CHECK_SECONDS = 60.0  # how often a Redis in use is asked whether it may evict keys
_KEY_PARTS = ("res", "sum", "exp", "und", "dlv", "use", "ids")
_CONNECTIONS = 32  # to Redis, per daemon
_LEDGER = resources.files("quotagate.data").joinpath("ledger.lua")
_Args = Sequence[str | int]


def mailbox_keys(prefix: str, mailbox: str) -> list[str]:
    """The keys of one mailbox, in the order the script takes them; one hash slot."""
    return [f"{prefix}:{{{mailbox}}}:{part}" for part in _KEY_PARTS]


def transaction_key(node: str, transaction: Transaction, copy: str = "") -> str:
    """A transaction across hosts (Postfix's instance is unique on its own host only), and the
    copy of its message a reservation is for (see :class:`Reservation`), after a NUL."""
    key = f"{node}|{transaction.client}|{transaction.id}"
    return f"{key}\0{copy}" if copy else key


def holding_member(mailbox: str, copy: str) -> str:
    """An entry of a transaction's index: a mailbox it holds room in, and for which copy."""
    return f"{mailbox}\0{copy}" if copy else mailbox


def _ceiling_args(c: Ceiling | None) -> list[str | int]:
    if c is None:
        return []
    return ["" if c.bytes is None else c.bytes, "" if c.messages is None else c.messages]


def check_args(claim: Claim, node: str, reservation_ms: int) -> list[str | int]:
    """The script's ARGV from 3 on, for one check (see data/ledger.lua)."""
    whole, folder = claim.ceilings()
    cap_bytes, cap_messages = client_caps(claim.client_hold, claim.mailbox.limits)
    args: list[str | int] = [
        transaction_key(node, claim.transaction, claim.copy),
        claim.transaction.client,
        claim.holding,
        cap_bytes,
        cap_messages,
        reservation_ms,
        claim.usage.bytes,
        claim.usage.messages,
        max(0, round(claim.age * 1000)),
        1 if claim.own_clock else 0,
        round(claim.max_usage_age * 1000),
        *_ceiling_args(whole),
    ]
    if claim.folder is not None:
        # The folder's usage and ceiling, the share one client may hold of it, and its name.
        args += [claim.folder.usage.bytes, claim.folder.usage.messages, *_ceiling_args(folder)]
        args += [*client_caps(claim.client_hold, claim.folder.limits), claim.folder.name]
    return args


def weighed(reply: list[Any]) -> Weighed:
    fits, held, capped, used_bytes, used_messages, age_ms, reserved_bytes, reserved_messages, source = reply[:9]
    text = source.decode() if isinstance(source, bytes) else str(source)
    folder_bytes, folder_messages = reply[11:13] if len(reply) >= 13 else (0, 0)
    return Weighed(
        bool(fits),
        bool(held),
        bool(capped),
        int(used_bytes),
        int(used_messages),
        int(age_ms) / 1000,
        "shared" if text == SHARED_SOURCE else "local",
        Reserved(int(reserved_bytes), int(reserved_messages)),
        Reserved(int(folder_bytes), int(folder_messages)),
    )


def held_row(address: str, tx: bytes | str, raw: bytes | str, now_ms: int) -> dict[str, Any]:
    """One reservation as the ledger keeps it (``res`` hash: transaction -> cjson) as a row of
    ``quotagate reservations``; ``now_ms`` by Redis's clock."""
    key, _, copy = (tx.decode() if isinstance(tx, bytes) else tx).partition("\0")
    node, client, transaction = [*key.split("|", 2), "", ""][:3]
    r = json.loads(raw)
    return {
        "address": address,
        "copy": copy,
        "folder": str(r.get("g") or ""),
        "transaction": transaction,
        "client": client,
        "bytes": int(r.get("b", 0)),
        "age": round(max(0, now_ms - int(r.get("t", now_ms))) / 1000, 1),
        "state": {"flight": "in flight", "aside": "set aside"}.get(str(r.get("s")), "held"),
        "delivered": bool(r.get("d")),
        "expires_in": round((int(r.get("e", now_ms)) - now_ms) / 1000, 1),
        "delivered_ago": round(max(0, now_ms - int(r["d"])) / 1000, 1) if r.get("d") else None,
        "node": node,
    }


async def _one(page: list[str]) -> AsyncIterator[list[str]]:
    yield page


def connect(url: SharedUrl, timeout: float) -> Redis:
    """A redis-py asyncio client for ``[shared] url``; it connects on first use. No retries of
    its own: a failed call makes the daemon decide alone at once, and try Redis again later."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if not url.sentinel:
        # A burst waits (up to the timeout) for one of a bounded set of connections, rather
        # than opening one per request or failing past the pool's size.
        pool = BlockingConnectionPool.from_url(url.url, max_connections=_CONNECTIONS, timeout=timeout, **options)
        return Redis(connection_pool=pool)
    sentinel = Sentinel(list(url.sentinels), sentinel_kwargs={"socket_timeout": timeout}, **options)  # type: ignore[no-untyped-call, unused-ignore]  # typed since redis 8
    master: Redis = sentinel.master_for(url.service, db=url.db, password=url.password)
    return master


@dataclass(frozen=True)
class _Op:
    """A change the ledger must see: a transaction's end, a delivery, a reading."""

    name: str
    mailbox: str = ""
    args: tuple[str | int, ...] = ()
    transaction: Transaction | None = None
    measured_at: float = 0.0  # for a reading: its age is worked out when it is sent
    seen_at: float = 0.0  # for an end: when this host saw it, by its clock

    def row(self) -> list[Any]:
        """As kept beside the state file (:func:`quotagate.policy.state.save_owed`)."""
        tx = None if self.transaction is None else [self.transaction.client, self.transaction.id]
        return [self.name, self.mailbox, list(self.args), tx, self.measured_at, self.seen_at]

    @classmethod
    def from_row(cls, row: list[Any]) -> _Op:
        """Raises ValueError or TypeError for a row this version did not write."""
        name, mailbox, args, tx, measured_at, seen_at = row
        if name not in ("end", "delivered", "usage") or not isinstance(args, list):
            raise ValueError(f"unknown change {name!r}")
        if not all(isinstance(arg, str | int) and not isinstance(arg, bool) for arg in args):
            raise ValueError("arguments are not strings or numbers")
        transaction = None if tx is None else Transaction(str(tx[0]), str(tx[1]))
        if name == "end" and transaction is None:
            raise ValueError("an end without its transaction")
        return cls(name, str(mailbox), tuple(args), transaction, float(measured_at), float(seen_at))


class _Pending:
    """The changes Redis missed while away, replayed in the order they were made once it is
    back (kept beside the daemon's state file across restarts, see RedisLedger.keep_owed_at).
    Transaction ends are kept apart from deliveries and readings, each kind up to
    :data:`MAX_PENDING` (the oldest dropped first, said once per outage): a long partition
    that sees many deliveries would otherwise crowd out the ends, and the room each ended
    transaction held would stay held in Redis until it expired. A dropped delivery or reading
    costs less: its room stays in flight until the next reading, or expires."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self._ends: deque[tuple[int, _Op]] = deque()
        self._others: deque[tuple[int, _Op]] = deque()
        self._limit = limit
        self._seq = itertools.count()
        self.dropped = 0
        self.changes = 0  # moves whenever what is kept changes (it is then written again)

    def __bool__(self) -> bool:
        return bool(self._ends or self._others)

    def add(self, ops: Iterable[_Op]) -> None:
        for op in ops:
            self.changes += 1
            kept = self._ends if op.name == "end" else self._others
            kept.append((next(self._seq), op))
            if len(kept) > self._limit:
                kept.popleft()
                if not self.dropped:
                    log.warning(
                        "more than %d changes of one kind missed the shared state: the oldest are dropped", self._limit
                    )
                self.dropped += 1

    def first(self, n: int) -> list[_Op]:
        """The ``n`` oldest, in the order they were made."""
        merged = heapq.merge(self._ends, self._others, key=lambda entry: entry[0])
        return [op for _, op in itertools.islice(merged, n)]

    def kept(self) -> tuple[list[tuple[int, _Op]], list[tuple[int, _Op]]]:
        """What is kept now, copied (two list copies, on the loop) for :func:`_rows` to turn
        into rows in a thread: up to 2 x MAX_PENDING of them while Redis is away."""
        return list(self._ends), list(self._others)

    def drop_first(self, n: int) -> None:
        self.changes += 1
        for _ in range(n):
            if self._others and (not self._ends or self._others[0][0] < self._ends[0][0]):
                self._others.popleft()
            else:
                self._ends.popleft()


def _rows(kept: tuple[list[tuple[int, _Op]], list[tuple[int, _Op]]]) -> list[list[Any]]:
    """Every change of a :meth:`_Pending.kept` copy, oldest first, as rows for the file beside
    the state file."""
    return [op.row() for _, op in heapq.merge(*kept, key=lambda entry: entry[0])]


class RedisLedger:
    """:class:`quotagate.policy.claim.SharedState` on Redis, with the daemon's own reservations
    (``local``) as the fallback while Redis is away."""

    def __init__(
        self,
        settings: SharedConfig,
        reservation_seconds: float,
        local: Reservations,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = settings.parsed
        assert url is not None, "RedisLedger without [shared] url"
        self.url = url
        self.settings = settings
        self.node = settings.node or socket.gethostname()
        self.reservation_seconds = reservation_seconds
        self.local = local
        self.metrics = metrics
        self.clock = clock
        self._client: Redis | None = None
        self._script = _LEDGER.read_text(encoding="utf-8")
        self._sha = ""  # its digest, once Redis has it (SCRIPT LOAD)
        self._up = False
        self._closing = False
        self._pending = _Pending()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._batch: list[tuple[Claim, asyncio.Future[Weighed | None]]] = []  # claims for the next pipeline
        self._ops: list[_Op] = []  # changes for the next pipeline
        self._applying: asyncio.Task[None] | None = None  # the changes sent last (see _claim_all)
        self._probe: asyncio.Task[None] | None = None
        # A storage host's current readings: sent again whenever Redis comes back (it may have
        # come back empty, and a reading is sent only when it changes).
        self.current: Callable[[], Iterable[Reading]] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._run_id = ""  # Redis's own: a new one means it restarted, empty, under us
        self._memory_due = 0.0  # when the heartbeat looks at Redis's eviction policy again
        # What a call to Redis may raise when it is away (redis-py's errors once it is imported).
        self._faults: tuple[type[Exception], ...] = (OSError, TimeoutError)
        self._noscript: tuple[type[Exception], ...] = ()  # Redis lost the script (NOSCRIPT)
        # Replies that say Redis cannot take the call now, whatever the call (see _away).
        self._refusals: tuple[type[Exception], ...] = ()
        self._cluster_log = Throttled(log)
        self._eviction_log = Throttled(log)
        # The daemon's state file: what Redis missed is kept beside it (see keep_owed_at).
        self._state_file: Path | None = None
        self._owed_written = 0  # _pending.changes when it was last written there
        self._owed_at = 0.0  # when, by time.monotonic
        # Writes of it, in threads (one may outlive a cancelled wait for it): never an older over a newer.
        self._owed_lock = threading.Lock()
        self._owed_on_disk = -1
        self._owed_log = Throttled(log)

    @property
    def up(self) -> bool:
        return self._up

    @property
    def settled(self) -> bool:
        """Every check and change asked for so far has had its answer from Redis (or failed)."""
        return not (self._tasks or self._batch or self._ops)

    @property
    def _life_ms(self) -> int:
        return round(self.reservation_seconds * 1000) + _MARGIN_MS

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and load the script; Redis away at start is an outage like any other."""
        from redis.exceptions import (
            BusyLoadingError,
            ClusterDownError,
            ConnectionError,
            MasterDownError,
            NoScriptError,
            OutOfMemoryError,
            ReadOnlyError,
            RedisError,
            TryAgainError,
        )

        self._faults = (RedisError, OSError, TimeoutError)
        self._noscript = (NoScriptError,)
        self._refusals = (
            ConnectionError,
            OutOfMemoryError,
            ReadOnlyError,
            BusyLoadingError,
            MasterDownError,
            TryAgainError,
            ClusterDownError,
        )
        self._client = connect(self.url, self.settings.timeout)
        if await self._recover():
            await self._keep_owed(at_once=True)  # what an earlier run owed it went: kept no more
        else:
            self._down("not reachable at start")
        self._heartbeat = asyncio.ensure_future(self._heartbeat_forever())

    async def close(self) -> None:
        # The loops also stop at their next turn: a cancellation that meets one of redis-py's own
        # timeouts or a connection it closes can come out as a Redis error they outlive.
        self._closing = True
        for task in (self._heartbeat, self._probe, self._resync):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.timeout)
        await self._keep_owed(at_once=True)  # a restart before Redis is back replays them still
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)  # ours, given to it

    # -- checks --------------------------------------------------------------------------------
    def claim(self, claim: Claim) -> asyncio.Future[Weighed | None]:
        """Weigh (and hold) in Redis. The checks asked in one turn of the event loop (a burst,
        many connections) go in one pipeline: one round trip and one pass through the client
        for all of them, rather than one each."""
        future: asyncio.Future[Weighed | None] = asyncio.get_running_loop().create_future()
        self._batch.append((claim, future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._claim_all(batch, self._applying))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim_all(
        self, batch: list[tuple[Claim, asyncio.Future[Weighed | None]]], after: asyncio.Task[None] | None
    ) -> None:
        """The batch's checks in one pipeline, once the changes sent before them (``after``) are
        in: a transaction's end takes a round trip of its own (which mailboxes it holds room in)
        before its pipeline, which the next check's would overtake (Postfix's next ``instance``
        on a connection would find the client still holding the room the end lets go).
        Whatever goes wrong, every check gets an answer (None: decide alone), never a wait
        until the MTA gives up."""
        try:
            if after is not None and not after.done():
                await asyncio.wait([after], timeout=self.settings.timeout)
                if not self._up:  # those changes found Redis away: decided alone, at once
                    return
            await self._weigh_all(batch)
        finally:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _weigh_all(self, batch: list[tuple[Claim, asyncio.Future[Weighed | None]]]) -> None:
        reservation_ms = round(self.reservation_seconds * 1000)

        def queue(pipe: Pipeline) -> None:
            for claim, _ in batch:
                keys = mailbox_keys(self.settings.prefix, claim.mailbox.address)
                op = ("prdr" if claim.per_recipient else "data") if claim.at_data else "check"
                self._queue(pipe, keys, [op, self._life_ms, *check_args(claim, self.node, reservation_ms)])
                if claim.holding:
                    # Which mailboxes a transaction holds room in, for its end (which may
                    # reach another daemon of the same host: Postfix opens a new connection).
                    index = self._index_key(claim.transaction)
                    pipe.sadd(index, holding_member(claim.mailbox.address, claim.copy))
                    pipe.pexpire(index, self._life_ms)

        try:
            async with asyncio.timeout(self.settings.timeout):
                replies = await self._pipeline(queue, raise_on_error=False)
                self._raise_away(replies)
            refused = True  # any other error in a reply is the script's, for that check alone
        except self._faults as exc:  # Redis away: decide alone
            self._failed(exc)
            replies, refused = [exc] * sum(3 if claim.holding else 1 for claim, _ in batch), False
        at = 0
        for claim, future in batch:
            reply = replies[at]
            at += 3 if claim.holding else 1
            if future.done():  # the request gave up waiting
                continue
            if isinstance(reply, Exception):
                if refused and self.metrics is not None:
                    self.metrics.shared_errors.inc()
                future.set_result(None)  # decide alone
            else:
                future.set_result(weighed(reply))

    def _index_key(self, transaction: Transaction) -> str:
        return f"{self.settings.prefix}:tx:{{{transaction_key(self.node, transaction)}}}"

    def _ended_key(self, transaction: Transaction) -> str:
        """A hash of the transaction's ends (see :meth:`_apply`): ``n`` when the last one without
        data was seen, ``d`` and ``s`` when the last one with data was, and its size (ms by this
        host's clock: only its own daemons' write-backs compare them, with when their
        reservations were made)."""
        return f"{self._index_key(transaction)}:end"

    # -- changes -------------------------------------------------------------------------------
    def end(self, transaction: Transaction, with_data: bool, size: int | None = None, now: float | None = None) -> None:
        """``now``: when it was seen, by the clock the daemon's reservations are made by."""
        args = (1 if with_data else 0, "" if size is None else size)
        self._send(_Op("end", transaction=transaction, args=args, seen_at=self.clock() if now is None else now))

    def delivered(self, mailbox: str, size: int | None = None) -> None:
        """A message landed in ``mailbox``, of ``size`` bytes when known (see
        :meth:`Reservations.delivered`). Named, so that Redis applies it once however often it
        is sent: a reply that came after the timeout had it replayed, and a second delivery
        marked would let the next reading release the room of a message still in flight."""
        known: tuple[str | int, ...] = () if size is None else (size, delivery_most(size))
        self._send(_Op("delivered", mailbox, (os.urandom(8).hex(), *known)))

    def readings(self, readings: Iterable[Reading]) -> None:
        """A storage host's fresh readings: every MX weighs them from now on."""
        for r in readings:
            if r.state is not State.UNKNOWN:
                self._send(_Op("usage", r.address, (r.bytes, r.messages), measured_at=r.measured_at))

    def _say_eviction(self, info: dict[str, Any]) -> None:
        """Say (once a minute) when Redis may evict keys (``info``: its INFO): held room can then
        vanish (more mail let in) or an ended transaction's index go (its room held until it
        expires)."""
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if int(info.get("maxmemory", 0) or 0) and policy != "noeviction":
            self._eviction_log.warning(
                "shared state at %s may evict keys (maxmemory-policy %s): room held there can vanish"
                " or stay held until it expires; give quotagate a Redis with maxmemory-policy noeviction",
                self._where,
                policy,
            )

    async def _server_run(self) -> str:
        assert self._client is not None
        info = await self._client.info("server")
        return str(info.get("run_id", ""))

    async def _heartbeat_forever(self) -> None:
        """An outage is noticed without waiting for a request to pay for it, and so is a Redis
        that restarted between two calls (it came back empty: a storage host sends its readings
        again; the room it held for the MX hosts is lost, see docs/scaling.md)."""
        while not self._closing:
            await asyncio.sleep(self.settings.retry_seconds)
            if not self._up:
                continue
            try:
                async with asyncio.timeout(self.settings.timeout):
                    run_id = await self._server_run()
                    await self._look_at_eviction()
            except self._faults as exc:
                self._failed(exc)
                continue
            if self._new_run(run_id):
                self._send_current()

    async def _look_at_eviction(self) -> None:
        """Whether Redis may evict keys, asked again every EVICTION_CHECK_SECONDS: its policy can
        change under a running daemon (CONFIG SET, a managed service's setting)."""
        if time.monotonic() < self._memory_due:
            return
        assert self._client is not None
        self._memory_due = time.monotonic() + EVICTION_CHECK_SECONDS
        self._say_eviction(await self._client.info("memory"))

    def _new_run(self, run_id: str) -> bool:
        """Whether ``run_id`` (Redis's INFO) says it restarted since it was last asked, and so
        came back empty: said, whether seen between two calls or at the end of an outage."""
        restarted = bool(self._run_id) and run_id != self._run_id
        if restarted:
            log.warning("shared state at %s restarted: the room it held is lost", self._where)
        self._run_id = run_id
        return restarted

    def _send_current(self) -> None:
        if self.current is not None and (self._resync is None or self._resync.done()):
            self._resync = asyncio.ensure_future(self._send_readings(list(self.current())))

    async def _send_readings(self, readings: list[Reading], batch: int = 1000) -> None:
        """Every reading, a pipeline per ``batch`` (a large spool is many thousand mailboxes)."""
        try:
            for start in range(0, len(readings), batch):
                async with asyncio.timeout(self.settings.timeout * 10):
                    await self._pipeline(functools.partial(self._queue_readings, readings[start : start + batch]))
        except self._faults as exc:
            self._failed(exc)  # sent again once Redis is back

    def _queue_readings(self, readings: list[Reading], pipe: Pipeline) -> None:
        for r in readings:
            if r.state is not State.UNKNOWN:
                age = max(0, round((self.clock() - r.measured_at) * 1000))
                keys = mailbox_keys(self.settings.prefix, r.address)
                self._queue(pipe, keys, ["usage", _USAGE_MS, r.bytes, r.messages, age])

    def _send(self, op: _Op) -> None:
        """Changes made in one turn of the event loop go to Redis together (one pipeline)."""
        if not self._up:
            self._pending.add([op])
            return
        self._ops.append(op)
        if len(self._ops) == 1:
            asyncio.get_running_loop().call_soon(self._flush_ops)

    def _flush_ops(self) -> None:
        ops, self._ops = self._ops, []
        task = self._applying = asyncio.ensure_future(self._apply_or_keep(ops))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply_or_keep(self, ops: list[_Op]) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._apply(ops)
        except self._faults as exc:
            self._pending.add(ops)
            self._failed(exc)

    async def _apply(self, ops: Sequence[_Op], replayed: bool = False) -> None:
        """``ops``, in order, in one pipeline; the transactions that end first look up, together,
        which mailboxes they hold room in.

        An end leaves word of itself (:meth:`_ended_key`) when it lets room go in Redis, for a
        copy of that room written back later from a state file written before it was handed over
        (a daemon that died before its next save), and always when ``replayed`` (seen while Redis
        was away), before its look-up: room another daemon of this host held alone for the
        transaction meanwhile (a worker of ``serve --workers``) is in no index yet. The script's
        ``restore`` holds neither again."""
        assert self._client is not None
        prefix, life = self.settings.prefix, self._life_ms
        ends = [op for op in ops if op.name == "end" and op.transaction is not None]
        held: list[Any] = []
        if ends:
            async with self._client.pipeline(transaction=False) as pipe:
                for end in ends:
                    assert end.transaction is not None
                    if replayed:
                        self._queue_ended(pipe, end)
                    pipe.smembers(self._index_key(end.transaction))
                held = (await pipe.execute())[2::3] if replayed else await pipe.execute()
        mailboxes = iter(held)
        calls: list[tuple[list[str], _Args]] = []
        ended: list[_Op] = []
        for op in ops:
            if op.name == "end" and op.transaction is not None:
                members = next(mailboxes)
                if members and not replayed:
                    ended.append(op)
                for member in members:
                    text = member.decode() if isinstance(member, bytes) else str(member)
                    address, _, copy = text.partition("\0")
                    tx = transaction_key(self.node, op.transaction, copy)
                    calls.append((mailbox_keys(prefix, address), ["end", life, tx, *op.args]))
            elif op.name == "usage":
                age = max(0, round((self.clock() - op.measured_at) * 1000))
                calls.append((mailbox_keys(prefix, op.mailbox), ["usage", _USAGE_MS, *op.args, age]))
            else:
                calls.append((mailbox_keys(prefix, op.mailbox), [op.name, life, *op.args]))
        if not calls:
            return

        def queue(pipe: Pipeline) -> None:
            for op in ended:
                self._queue_ended(pipe, op)
            self._queue_all(calls, pipe)

        # An error in a reply is the script's, for that change alone: it is dropped and said,
        # never kept for a replay that would fail the same way and keep Redis taken for away.
        # Unless Redis took none: then the changes are kept and replayed (each is idempotent).
        replies = await self._pipeline(queue, raise_on_error=False)
        self._raise_away(replies)
        refused = [reply for reply in replies if isinstance(reply, Exception)]
        if refused:
            if self.metrics is not None:
                self.metrics.shared_errors.inc(len(refused))
            log.warning("shared state refused %d of %d changes (dropped): %s", len(refused), len(calls), refused[0])

    def _queue_ended(self, pipe: Pipeline, end: _Op) -> None:
        """Word of a transaction's end (see :meth:`_apply`), for as long as its index lives."""
        assert end.transaction is not None
        key, at = self._ended_key(end.transaction), round(end.seen_at * 1000)
        pipe.hset(key, mapping={"d": at, "s": end.args[1]} if end.args[0] == 1 else {"n": at})
        pipe.pexpire(key, self._life_ms)

    # -- the admin's release (quotagate reservations --release) ---------------------------------
    async def release(self, mailbox: str | None) -> int:
        """Let go of the room every host holds for ``mailbox`` (every mailbox when None), now,
        each mailbox in one script call; how many reservations went. Not queued while Redis is
        away (replayed later it would free room taken since): the admin is told instead."""
        if not self._up:
            raise SharedUnavailable(f"{self._where} is not reachable")
        try:
            if mailbox is not None:
                async with asyncio.timeout(self.settings.timeout):
                    return await self._release([mailbox])
            return await self._release_all()
        except self._faults as exc:
            self._failed(exc)
            raise SharedUnavailable(f"{self._where}: {type(exc).__name__}: {exc}") from None

    async def _release_all(self) -> int:
        """Every mailbox holding room under this prefix, released a page at a time."""
        released = 0
        async for page in self._holding():
            async with asyncio.timeout(self.settings.timeout):
                released += await self._release(page)
        return released

    async def _holding(self, batch: int = 1000) -> AsyncIterator[list[str]]:
        """The mailboxes with room held under this prefix, a page at a time, found by SCAN (KEYS
        would stall Redis for every host on a large key space)."""
        assert self._client is not None
        prefix = self.settings.prefix
        pattern = f"{prefix}:{{*}}:res"  # the config allows no wildcard in a prefix
        head, tail = len(prefix) + 2, -len("}:res")
        cursor = 0
        while True:
            async with asyncio.timeout(self.settings.timeout):
                cursor, keys = await self._client.scan(cursor, match=pattern, count=batch)
            names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
            yield sorted({name[head:tail] for name in names})
            if cursor == 0:
                return

    async def held(self, mailbox: str | None, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        """The room every host holds for ``mailbox`` (every mailbox when None; at most ``limit``
        rows, from the mailboxes SCAN finds first, oldest first among them), as rows for
        ``quotagate reservations``, each naming the host (``[shared] node``) that took it.
        Raises :class:`SharedUnavailable`."""
        if not self._up:
            raise SharedUnavailable(f"{self._where} is not reachable")
        assert self._client is not None
        rows: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(self.settings.timeout):
                seconds, micros = await self._client.time()
            now_ms = seconds * 1000 + micros // 1000  # ages by Redis's clock, as the script keeps them
            async for page in self._holding() if mailbox is None else _one([mailbox]):
                async with asyncio.timeout(self.settings.timeout), self._client.pipeline(transaction=False) as pipe:
                    for address in page:
                        pipe.hgetall(mailbox_keys(self.settings.prefix, address)[0])
                    found = await pipe.execute()
                for address, entries in zip(page, found, strict=True):
                    rows += [held_row(address, tx, raw, now_ms) for tx, raw in entries.items()]
                if len(rows) >= limit:
                    break
        except self._faults as exc:
            self._failed(exc)
            raise SharedUnavailable(f"{self._where}: {type(exc).__name__}: {exc}") from None
        return sorted(rows, key=lambda row: -row["age"])[:limit]

    async def _release(self, mailboxes: list[str]) -> int:
        if not mailboxes:
            return 0
        release: _Args = ["release", self._life_ms]
        calls = [(mailbox_keys(self.settings.prefix, mailbox), release) for mailbox in mailboxes]
        return sum(int(n) for n in await self._pipeline(functools.partial(self._queue_all, calls)))

    # -- calling the script ----------------------------------------------------------------------
    async def _load(self) -> None:
        """SCRIPT LOAD: from then on a call sends the script's digest only (EVALSHA)."""
        assert self._client is not None
        self._sha = str(await self._client.script_load(self._script))

    async def _eval(self, keys: list[str], args: _Args) -> Any:
        """One call of the script; a Redis that lost it (restarted, failed over) gets it again."""
        assert self._client is not None
        try:
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)
        except self._noscript:
            await self._load()
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)

    def _queue(self, pipe: Pipeline, keys: list[str], args: _Args) -> None:
        pipe.evalsha(self._sha, len(keys), *keys, *args)

    def _queue_all(self, calls: Sequence[tuple[list[str], _Args]], pipe: Pipeline) -> None:
        for keys, args in calls:
            self._queue(pipe, keys, args)

    async def _pipeline(self, queue: Callable[[Pipeline], None], raise_on_error: bool = True) -> list[Any]:
        """What ``queue`` adds (calls of the script through :meth:`_queue`, other commands), in
        one round trip: redis-py's Script object would ask SCRIPT EXISTS first, a second one. A
        Redis that lost the script ran none of those calls (NOSCRIPT): it is loaded again and
        everything sent again (the other commands are idempotent)."""
        try:
            replies = await self._execute(queue, raise_on_error)
            if not any(isinstance(reply, self._noscript) for reply in replies):
                return replies
        except self._noscript:
            pass
        await self._load()
        return await self._execute(queue, raise_on_error)

    async def _execute(self, queue: Callable[[Pipeline], None], raise_on_error: bool) -> list[Any]:
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            queue(pipe)
            return await pipe.execute(raise_on_error=raise_on_error)

    # -- faults --------------------------------------------------------------------------------
    def _raise_away(self, replies: Sequence[Any]) -> None:
        """The first reply that says Redis is away although it answered, raised: out of memory
        (``maxmemory`` with noeviction), read-only (a plain URL left on a demoted master),
        loading, its master down, a script still running (``BUSY``). Every call gets such a
        reply then: each daemon would decide alone while ``quotagate_shared_up`` said 1, and
        the room it held alone would never be written back."""
        for reply in replies:
            if isinstance(reply, self._refusals) or (isinstance(reply, Exception) and str(reply).startswith("BUSY")):
                raise reply

    def _failed(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.shared_errors.inc()
        if self._up:
            self._down(f"{type(exc).__name__}: {exc}")

    def _down(self, why: str) -> None:
        self._up = False
        if self.metrics is not None:
            self.metrics.shared_up.set(0)
        log.error(
            "shared state at %s unavailable (%s): deciding with this daemon's own reservations until it is back",
            self._where,
            why,
        )
        if not self._closing and (self._probe is None or self._probe.done()):
            self._probe = asyncio.ensure_future(self._probe_forever())

    @property
    def _where(self) -> str:
        from quotagate.store import redacted

        return redacted(self.url.url)

    async def _probe_forever(self) -> None:
        while not self._closing and not await self._recover():
            await self._keep_owed()
            await asyncio.sleep(self.settings.retry_seconds)
        await self._keep_owed(at_once=True)  # replayed: kept no more

    # -- what Redis missed, kept across restarts -------------------------------------------------
    def keep_owed_at(self, state_file: Path) -> None:
        """Keep what Redis misses beside the daemon's state file, and take what an earlier run
        left there (a restart while Redis was away): replayed first once Redis is back."""
        self._state_file = state_file
        ops = []
        for row in state.load_owed(state_file):
            try:
                ops.append(_Op.from_row(row))
            except (ValueError, TypeError, IndexError) as exc:
                log.warning("a change owed to the shared state not restored: %s", exc)
        self._pending.add(ops)
        self._owed_written = self._owed_on_disk = self._pending.changes  # as the file has them
        self._owed_at = time.monotonic()
        if ops:
            log.info("%d changes owed to the shared state restored from %s", len(ops), state.owed_file(state_file))

    async def _keep_owed(self, at_once: bool = False) -> None:
        """Write what Redis missed beside the state file when it changed (every few seconds at
        most while Redis is away, unless ``at_once``); a file that cannot be written is said."""
        path = self._state_file
        if path is None or self._owed_written == self._pending.changes:
            return
        if not at_once and time.monotonic() - self._owed_at < _OWED_SECONDS:
            return
        changes, kept = self._pending.changes, self._pending.kept()
        self._owed_at = time.monotonic()
        try:
            await asyncio.to_thread(self._save_owed, path, changes, kept)
        except OSError as exc:
            self._owed_log.warning("cannot keep changes owed to the shared state beside %s: %s", path, exc)
            return
        self._owed_written = changes

    def _save_owed(self, path: Path, changes: int, kept: tuple[list[tuple[int, _Op]], list[tuple[int, _Op]]]) -> None:
        with self._owed_lock:
            if changes > self._owed_on_disk:
                state.save_owed(path, _rows(kept))
                self._owed_on_disk = changes

    async def _recover(self) -> bool:
        """Redis answers again: replay what it missed, write back the room held alone, use it.

        Until the last step nothing goes to Redis directly (checks are decided alone, changes are
        queued), so the loop ends with nothing queued and nothing held alone, and no await
        between that and using Redis again.
        """
        assert self._client is not None
        replayed = written = 0
        try:
            async with asyncio.timeout(self.settings.timeout):
                # Connections opened before the outage lead nowhere now: the first call on one
                # would fail and take Redis away again at once.
                await self._client.connection_pool.disconnect()
                info = await self._client.info()  # its default sections: server, memory, cluster...
                # A Cluster node answers MOVED for the keys of other slots, which no call here follows.
                if info.get("cluster_enabled"):
                    self._cluster_log.warning(
                        "shared state at %s is a Redis Cluster node, which quotagate cannot use (its"
                        " transactions' keys span slots): each daemon decides alone; give one Redis"
                        " server or a Sentinel set",
                        self._where,
                    )
                    return False
                self._say_eviction(info)
                self._new_run(str(info.get("run_id", "")))
                await self._load()
            while True:
                while self._pending:
                    chunk = self._pending.first(_REPLAY_BATCH)
                    async with asyncio.timeout(self.settings.timeout * 10):
                        await self._apply(chunk, replayed=True)
                    self._pending.drop_first(len(chunk))
                    replayed += len(chunk)
                alone = list(self.local)
                if not alone:
                    break
                written += await self._write_back(alone)
        except self._faults as exc:
            log.debug("shared state at %s still unavailable: %s", self._where, exc)
            return False
        self._up = True
        self._pending.dropped = 0
        if self.metrics is not None:
            self.metrics.shared_up.set(1)
        self._send_current()
        log.info(
            "shared state at %s in use: %d changes replayed, %d reservations written back",
            self._where,
            replayed,
            written,
        )
        return True

    async def _write_back(self, alone: list[Reservation]) -> int:
        """Room this daemon held alone goes to Redis (a transaction Redis already knows is left
        as it is there), and is then let go here: Redis has it."""
        assert self._client is not None
        written = 0
        for r in alone:
            now = self.clock()
            left = round((r.expires_at - now) * 1000)
            if left > 0:
                since = -1 if r.delivered_at is None else max(0, round((now - r.delivered_at) * 1000))
                tx = transaction_key(self.node, r.transaction, r.copy)
                # Its state as written: the transaction may end (END-OF-MESSAGE) during the await,
                # and the end, replayed next, finds its mailbox through the index the script
                # writes (with the reservation, atomically: an end another daemon applies at once
                # finds either both or neither, and then its word, see _apply).
                args: list[str | int] = ["restore", self._life_ms, tx, r.transaction.client, r.bytes, r.state]
                args += [left, since, r.folder, round(r.made_at * 1000), holding_member(r.mailbox, r.copy)]
                keys = mailbox_keys(self.settings.prefix, r.mailbox)
                keys += [self._index_key(r.transaction), self._ended_key(r.transaction)]
                async with asyncio.timeout(self.settings.timeout):
                    written += int(await self._eval(keys, args))
            self.local.hand_over(r)
        return written


class SharedReservations(Reservations):
    """The daemon's own reservations, whose transaction ends and deliveries also reach the shared
    ledger: the service calls them as it always did, whoever holds the room."""

    ledger: RedisLedger | None = None

    def end(self, transaction: Transaction, with_data: bool, now: float, size: int | None = None) -> int:
        changed = super().end(transaction, with_data, now, size)
        if self.ledger is not None:
            self.ledger.end(transaction, with_data, size, now)
        return changed

    def holds(self, transaction: Transaction) -> bool:
        """Room held in the shared ledger is not known here: say so whenever it may be there."""
        return self.ledger is not None or super().holds(transaction)

    def delivered(self, mailbox: str, now: float, size: int | None = None) -> bool:
        """A delivery is matched once: to room held here (accepted alone while Redis was away:
        written back with it, the delivery goes to Redis then), or else to Redis's. Sent to
        both, one delivery would release two messages, one of them still in flight."""
        seen = super().delivered(mailbox, now, size)
        if self.ledger is not None and not seen:
            self.ledger.delivered(mailbox, size)
        return seen


def attach(service: PolicyService, metrics: Metrics) -> RedisLedger | None:
    """The shared ledger for ``[shared] url``, put under the service (its checks are weighed there,
    its reservations become the fallback); None, and the service untouched, without it."""
    config = service.config
    if config.shared.url is None:
        return None
    policy = config.policy
    local = SharedReservations(policy.reservation_seconds, policy.max_reservations)
    ledger = RedisLedger(config.shared, policy.reservation_seconds, local, metrics)
    local.ledger = ledger
    service.reservations = local
    service.shared = ledger
    return ledger
