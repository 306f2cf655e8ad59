"""One policy request in, one action out: the daemon's decisions, fail-open in one place."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

from quotagate.accounting import grace_for, profile_for
from quotagate.address import BadAddress, normalize
from quotagate.config import Config
from quotagate.decide import Reserved, decide, judged_with, known_size
from quotagate.model import Action, Decision, Limits, Mailbox, Reading, Usage
from quotagate.policy.claim import Claim, SharedState, Weighed, settle
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.files import FileReads
from quotagate.policy.live import Live, MaildirsizeReader, Snapshot, Unreadable, usage_age
from quotagate.policy.metrics import Metrics
from quotagate.policy.replies import reply_for
from quotagate.policy.reservations import Reservations, Transaction, client_key
from quotagate.policy.throttle import Throttled
from quotagate.spool import spool_roots
from quotagate.usage.folders import folder_limits

log = logging.getLogger(__name__)

DUNNO = "DUNNO"
# Not a Postfix request: Exim's event_action tells the daemon of a local delivery.
DELIVERY_HINT = "quotagate_delivery"
# Not a Postfix request: Exim's ACLs say a transaction ended without data (next MAIL, QUIT).
TRANSACTION_END = "quotagate_end"
# Postfix's smtpd_end_of_data_restrictions, and Exim's DATA ACL: the message was accepted.
END_OF_MESSAGE = "END-OF-MESSAGE"
# Only RCPT is checked; Exim's requests may leave protocol_state out.
_CHECKED_STATES = frozenset({"RCPT", ""})
_UNLIMITED = 2**62


@dataclass
class Session:
    """What one client connection carries from a request to the next: Postfix asks about one
    transaction at a time on a connection, so a new ``instance`` ends the one before."""

    transaction: Transaction | None = None


@dataclass(frozen=True)
class Outcome:
    address: str
    decision: Decision
    usage: Usage | None


@dataclass(frozen=True)
class _Target:
    """A recipient found in the snapshot: its mailbox, the folder asked for, and the reading
    whose maildirsize is to be read live (None: nothing to read)."""

    snapshot: Snapshot
    mailbox: Mailbox
    folder: str | None
    live: Reading | None


class PolicyService:
    def __init__(self, config: Config, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.snapshot = Snapshot()
        self.reservations = Reservations(config.policy.reservation_seconds, config.policy.max_reservations)
        self._once = itertools.count()
        self.maildirsize = MaildirsizeReader(spool_roots(config.spool))
        # The delivery agent's rules (where a full mailbox starts, its grace by default): worked
        # out once per config, not on every request.
        self._grace, self._boundary = grace_for(config), profile_for(config.spool).boundary
        self.files = FileReads(self.maildirsize, config.policy.file_timeout, config.policy.refresh_seconds)
        self._stale_log = Throttled(log)
        self._unreadable_log = Throttled(log)
        # Set when usage is tracked live: told of a local delivery (Exim's event_action).
        self.delivery_hint: Callable[[str], bool] | None = None
        # Set by the daemon when [shared] url is: checks are weighed and held there while it is up.
        self.shared: SharedState | None = None

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._grace, self._boundary = grace_for(config), profile_for(config.spool).boundary
        self.maildirsize.roots = spool_roots(config.spool)
        self.reservations.seconds = config.policy.reservation_seconds
        self.reservations.max_reservations = config.policy.max_reservations
        self.files.timeout = config.policy.file_timeout
        self.files.keep_seconds = config.policy.refresh_seconds

    def answer(self, request: PolicyRequest, session: Session | None = None) -> str:
        """The action for one request, reading a maildirsize in this thread (``quotagate check``,
        tests). The daemon uses :meth:`respond`, which never blocks on a file. Whatever goes
        wrong inside becomes DUNNO: the MTA then carries on as it would without quotagate, and no
        mail is lost to a bug of ours."""
        started = time.perf_counter()
        try:
            transaction = self._transaction(request, session)
            return self._unchecked(started, request, transaction) or self._finish(
                started, self.check(request.recipient, request.size, transaction)
            )
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    def respond(self, request: PolicyRequest, session: Session | None = None) -> str | asyncio.Future[str]:
        """:meth:`answer` for the event loop: at once, or (when the mailbox's maildirsize must be
        read) a future the worker pool resolves within file_timeout."""
        started = time.perf_counter()
        try:
            transaction = self._transaction(request, session)
            unchecked = self._unchecked(started, request, transaction)
            if unchecked is not None:
                return unchecked
            target = self._target(request.recipient)
            if isinstance(target, Outcome):
                return self._finish(started, target)
            if target.live is None:
                return self._conclude(started, request, target, None, transaction)
            read = self.files.start(
                target.live, lambda live: self._conclude(started, request, target, live, transaction)
            )
            if self.shared is None or isinstance(read, str):  # alone, _conclude answers at once
                return cast("str | asyncio.Future[str]", read)
            return asyncio.ensure_future(_flat(read))
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    def _transaction(self, request: PolicyRequest, session: Session | None) -> Transaction:
        """The SMTP transaction a request belongs to: Postfix's ``instance`` (Exim's ACLs send
        theirs under the same name) and the client. A request without one is a transaction of its
        own, whose room is held until it expires. On a Postfix connection a new instance ends the
        one before: its room is let go unless its message was accepted (then it is in flight)."""
        client = client_key(request.attributes.get("client_address", ""))
        instance = request.attributes.get("instance", "")
        if not instance:
            return Transaction(client, f"request-{next(self._once)}")
        transaction = Transaction(client, instance)
        if session is not None and request.request != TRANSACTION_END:
            previous, session.transaction = session.transaction, transaction
            if previous is not None and previous != transaction:
                self.reservations.end(previous, with_data=False, now=self.clock())
        return transaction

    def _unchecked(self, started: float, request: PolicyRequest, transaction: Transaction) -> str | None:
        """The answer to a request that is not a recipient check, or None."""
        if request.request == DELIVERY_HINT:
            self._hint(request.recipient)
            return self._done(started, Action.DUNNO, DUNNO)
        if request.request == TRANSACTION_END:
            self.reservations.end(transaction, with_data=False, now=self.clock())
            return self._done(started, Action.DUNNO, DUNNO)
        if request.protocol_state == END_OF_MESSAGE:
            self.reservations.end(transaction, with_data=True, now=self.clock())
            return self._done(started, Action.DUNNO, DUNNO)
        if request.protocol_state not in _CHECKED_STATES:
            return self._done(started, Action.DUNNO, DUNNO)
        return None

    def delivered(self, address: str) -> None:
        """A message landed in ``address`` (a watch event): the room held for it can go once a
        reading includes it."""
        self.reservations.delivered(address, self.clock())

    def _conclude(
        self, started: float, request: PolicyRequest, target: _Target, live: Live, transaction: Transaction
    ) -> str | asyncio.Future[str]:
        """The answer once the live usage is known (on the loop, maybe after a file read); a
        future while the shared ledger weighs it."""
        try:
            outcome = self._decide(target, request.size, live, transaction)
            if isinstance(outcome, Outcome):
                return self._finish(started, outcome)
            return asyncio.ensure_future(self._settle_shared(started, request, target, live, transaction, *outcome))
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    async def _settle_shared(
        self,
        started: float,
        request: PolicyRequest,
        target: _Target,
        live: Live,
        transaction: Transaction,
        claim: Claim,
        weighing: asyncio.Future[Weighed | None],
    ) -> str:
        """The answer from what the shared ledger weighed; decided alone when it failed."""
        try:
            weighed = await weighing
            if weighed is None:
                outcome = self._decide(target, request.size, live, transaction, alone=True)
                assert isinstance(outcome, Outcome)
            else:
                decision, usage = settle(claim, weighed, self.clock())
                outcome = Outcome(claim.mailbox.address, decision, usage)
            return self._finish(started, outcome)
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    def _finish(self, started: float, outcome: Outcome) -> str:
        return self._done(started, outcome.decision.action, self._action(outcome), outcome.usage)

    def _failed(self, started: float) -> str:
        self.metrics.errors.inc()
        return self._done(started, Action.DUNNO, DUNNO)

    def _hint(self, recipient: str) -> None:
        try:
            address = normalize(recipient)
        except BadAddress:
            log.debug("delivery hint for %r: not an address", recipient)
            return
        reading = self.snapshot.readings.get(address)
        if reading is not None:  # its maildirsize changed (on NFS, no event says so)
            self.files.forget(reading.path)
        self.delivered(address)
        if self.delivery_hint is not None:
            self.delivery_hint(address)

    def check(self, recipient: str, size: int | None, transaction: Transaction | None = None) -> Outcome:
        """The decision for one recipient and declared size, holding room when it is accepted.

        Reads a maildirsize in this thread: for ``quotagate check`` and tests, not the loop.
        """
        target = self._target(recipient)
        if isinstance(target, Outcome):
            return target
        live = None if target.live is None else self.maildirsize.read(target.live)
        transaction = transaction or Transaction("local", f"check-{next(self._once)}")
        outcome = self._decide(target, size, live, transaction, alone=True)
        assert isinstance(outcome, Outcome)
        return outcome

    def _target(self, recipient: str) -> _Target | Outcome:
        """The mailbox ``recipient`` names, or the outcome when there is none. No I/O."""
        snapshot = self.snapshot
        try:
            address = normalize(recipient)
        except BadAddress:
            return Outcome(recipient, Decision(Action.DUNNO, "not an address"), None)
        mailbox, folder = self._mailbox(snapshot, address, recipient)
        if mailbox is None:
            return Outcome(address, Decision(Action.DUNNO, "unknown recipient"), None)
        reading = snapshot.readings.get(mailbox.address)
        wanted = reading is not None and self.config.policy.use_maildirsize and self.maildirsize.wanted(reading)
        return _Target(snapshot, mailbox, folder, reading if wanted else None)

    def _decide(
        self, target: _Target, size: int | None, live: Live, transaction: Transaction, alone: bool = False
    ) -> Outcome | tuple[Claim, asyncio.Future[Weighed | None]]:
        """The decision, once the live usage (if any was wanted) is known. No I/O. With shared
        state (and not ``alone``), the claim sent to it and the future of its answer instead."""
        snapshot, mailbox, folder = target.snapshot, target.mailbox, target.folder
        if isinstance(live, Unreadable):
            self.metrics.unreadable.inc()
            self._unreadable_log.warning("maildirsize of %s: %s: DUNNO", mailbox.address, live.reason)
            return Outcome(mailbox.address, Decision(Action.DUNNO, f"maildirsize: {live.reason}"), None)
        limits, usage = self._limits_and_usage(snapshot, mailbox, folder, live)
        now = self.clock()
        if usage is not None and self._stale(mailbox.address, usage, now):
            return Outcome(mailbox.address, Decision(Action.DUNNO, "usage is older than max_usage_age"), usage)
        # A maildirsize is current when read (its mtime only says when it last changed).
        measured_at = (now if usage.source == "maildirsize" else usage.measured_at) if usage else 0.0
        if self.shared is not None and self.shared.up and not alone and Claim.wanted(mailbox, limits, usage):
            claim = self._claim(target, size, live, transaction, limits, usage, now)
            if claim is not None:
                return claim, self.shared.claim(claim)
        reserved = self.reservations.held(mailbox.address, now, measured_at)
        decision, usage = judged_with(partial(self._judge, target, limits, usage, size, live), reserved)
        s = known_size(size)
        if decision.action is Action.ACCEPT and s is not None and self.config.policy.reservation_seconds:
            share = self.config.policy.client_hold
            limits_ = mailbox.limits
            cap_bytes = share.of(limits_.bytes) if limits_.bytes else _UNLIMITED
            cap_messages = max(1, int(share.fraction * limits_.messages)) if limits_.messages else _UNLIMITED
            if not self.reservations.hold(transaction, mailbox.address, s, now, cap_bytes, cap_messages):
                # This client already holds its share of the mailbox's room before DATA: letting
                # more in without holding it would let it overfill the mailbox; try again later.
                decision = Decision(Action.DEFER, "the client holds its share of this mailbox", decision.numbers)
        return Outcome(mailbox.address, decision, usage)

    def _judge(
        self,
        target: _Target,
        limits: Limits | None,
        usage: Usage | None,
        size: int | None,
        live: Usage | None,
        reserved: Reserved,
    ) -> tuple[Decision, Usage | None]:
        """The decision with ``reserved`` room held, under the delivery agent's rules (where a
        full mailbox starts, its grace by default), and the usage it was taken on."""
        mailbox, grace, boundary = target.mailbox, self._grace, self._boundary
        decision = decide(mailbox, usage, size, reserved, grace, limits, boundary=boundary)
        if limits is not None and decision.action is Action.ACCEPT:
            # The folder's rule lets it in; the mailbox's own limit still holds.
            _, total = self._limits_and_usage(target.snapshot, mailbox, None, live)
            whole = decide(mailbox, total, size, reserved, grace, boundary=boundary)
            if whole.action is Action.REJECT:
                return whole, total
        return decision, usage

    def _claim(
        self,
        target: _Target,
        size: int | None,
        live: Live,
        transaction: Transaction,
        limits: Limits | None,
        usage: Usage | None,
        now: float,
    ) -> Claim | None:
        """The check as the shared ledger weighs it: the whole mailbox's usage (which a storage
        host's fresher one may replace) and, for local+folder, the folder's rule and usage."""
        if usage is None or isinstance(live, Unreadable):
            return None
        whole = usage if limits is None else self._limits_and_usage(target.snapshot, target.mailbox, None, live)[1]
        if whole is None:
            return None
        policy = self.config.policy
        return Claim(
            target.mailbox,
            whole,
            usage_age(whole, now),
            size,
            transaction,
            bool(policy.reservation_seconds),
            policy.client_hold,
            self._grace,
            self._boundary,
            None if limits is None else (limits, usage),
        )

    def _stale(self, address: str, usage: Usage, now: float) -> bool:
        """Usage nobody confirmed for max_usage_age (store down, watch dead, scans failing) could
        refuse a mailbox emptied since: not believed, counted, and logged once a minute."""
        age = usage_age(usage, now)
        limit = self.config.policy.max_usage_age
        if age <= limit:
            return False
        self.metrics.stale.inc()
        self._stale_log.warning("usage of %s is %.0fs old, more than max_usage_age (%gs): DUNNO", address, age, limit)
        return True

    def _mailbox(self, snapshot: Snapshot, address: str, recipient: str) -> tuple[Mailbox | None, str | None]:
        """The mailbox for ``address``, or for ``local@domain`` when it is ``local+folder@domain``.

        The folder is taken from the recipient as sent: Maildir++ folder names keep their case.
        """
        mailbox = snapshot.mailboxes.get(address)
        delimiter = self.config.policy.folder_delimiter
        if mailbox is not None or not delimiter:
            return mailbox, None
        local, _, domain = recipient.strip().rpartition("@")
        base, found, folder = local.partition(delimiter)
        if not found:
            return None, None
        try:
            return snapshot.mailboxes.get(normalize(f"{base}@{domain}")), folder
        except BadAddress:
            return None, None

    def _limits_and_usage(
        self, snapshot: Snapshot, mailbox: Mailbox, folder: str | None, live: Usage | None
    ) -> tuple[Limits | None, Usage | None]:
        reading = snapshot.readings.get(mailbox.address)
        if folder is not None and reading is not None:
            limits = folder_limits(folder, self.config.folders)
            if limits is not None:
                # A folder that does not exist yet is empty: the delivery agent creates it.
                held = reading.usage.folder(folder)
                used = Usage(held.bytes if held else 0, held.messages if held else 0, snapshot.fresh_at(reading))
                return limits, used
        if live is not None:
            return None, live
        return None, snapshot.stored_usage(mailbox.address)

    def _action(self, outcome: Outcome) -> str:
        decision = outcome.decision
        policy = self.config.policy
        if decision.action is Action.DEFER:
            log.info("deferred %s: %s", outcome.address, decision.reason)
            return policy.busy_reply
        if decision.action is not Action.REJECT:
            return DUNNO
        reply = reply_for(decision, policy)
        n = decision.numbers
        age = f"{usage_age(outcome.usage, self.clock()):.1f}s" if outcome.usage else "?"
        log.info(
            "refused %s: %s (used %s of %s bytes, %s reserved, size %s, usage from %s, %s old)",
            outcome.address,
            decision.reason,
            n.get("used_bytes"),
            n.get("limit_bytes"),
            n.get("reserved_bytes"),
            n.get("size") or "unknown",
            n.get("source"),
            age,
        )
        return reply

    def _done(self, started: float, action: Action, text: str, usage: Usage | None = None) -> str:
        self.metrics.observe(
            action.value, time.perf_counter() - started, None if usage is None else usage_age(usage, self.clock())
        )
        return text


async def _flat(read: Awaitable[str | Awaitable[str]]) -> str:
    """A file read's answer, which may itself be waiting for the shared ledger."""
    answer = await read
    return answer if isinstance(answer, str) else await answer
