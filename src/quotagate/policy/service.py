"""One policy request in, one action out: the daemon's decisions, fail-open in one place."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import NamedTuple, cast

from quotagate.accounting import grace_for, profile_for
from quotagate.address import BadAddress, dequoted, normalize, unrouted, without_detail
from quotagate.config import Config
from quotagate.decide import Held, Reserved, decide, judged_with, known_size
from quotagate.model import Action, Decision, FolderUsage, Limits, Mailbox, MailboxUsage, Numbers, Reading, Usage
from quotagate.policy.claim import (
    LIVE_OVER_FILES,
    STALE,
    Claim,
    ClaimedFolder,
    SharedState,
    Weighed,
    client_caps,
    settle,
)
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.echoes import Echoes
from quotagate.policy.files import FileReads
from quotagate.policy.live import Snapshot, measured_ago, usage_age
from quotagate.policy.liveusage import Live, MaildirsizeReader, Unreadable
from quotagate.policy.metrics import Metrics
from quotagate.policy.replies import reply_for
from quotagate.policy.reservations import Reservation, Reservations, Transaction, client_key
from quotagate.policy.stages import (
    RECIPIENTS_SECONDS,
    LetIn,
    Recipients,
    Stage,
    exim_data_size,
    label,
    message_verdict,
)
from quotagate.policy.throttle import Throttled
from quotagate.spool import spool_roots
from quotagate.usage.folders import detail_excluded, folder_limits, lowered_folder_limits
from quotagate.usage.names import ascii_lower, imap_name

log = logging.getLogger(__name__)

DUNNO = "DUNNO"
# Not a Postfix request: Exim's event_action tells the daemon of a local delivery.
DELIVERY_HINT = "quotagate_delivery"
# Not a Postfix request: Exim's ACLs say a transaction ended without data (next MAIL, QUIT).
TRANSACTION_END = "quotagate_end"
# Not a Postfix request: Exim's DATA ACLs ask about one recipient with the message's real size.
DATA_CHECK = "quotagate_data"
# Postfix's smtpd_end_of_data_restrictions (with recipient_count: check the message, then it was
# accepted), and the last statement of Exim's DATA ACL (without: the message was accepted).
END_OF_MESSAGE = "END-OF-MESSAGE"
CLOSED_GRACE = 60.0
"""Seconds the held room of a Postfix transaction stays once its policy connection closed."""
# Only RCPT is checked; Exim's requests may leave protocol_state out.
_CHECKED_STATES = frozenset({"RCPT", ""})
_REFUSED = (Action.REJECT, Action.DEFER)
_ROUTING_LEVELS = 4  # user%a%b@here, a!b!user@here: each level a lookup


@dataclass
class Session:
    """What one client connection carries from a request to the next: Postfix asks about one
    transaction at a time on a connection, so a new ``instance`` ends the one before, and so
    does the connection closing (see :meth:`PolicyService._connection_closed`)."""

    transaction: Transaction | None = None
    on_close: Callable[[], None] | None = None  # set once the connection is known to be Postfix's

    def close(self) -> None:
        """The connection closed."""
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()


def _folder_named(usage: MailboxUsage, name: str) -> FolderUsage | None:
    """The folder ``name`` as sent: spelled as on disk, or as an IMAP server shows it (the
    recipient ``alice+Gelöscht@`` over SMTPUTF8 is delivered into ``Gel&APY-scht``). Of two
    on disk that are the same folder to an IMAP server (its owner made ``.Gelöscht`` beside
    ``.Gel&APY-scht``), the most of each (bytes, messages): the agent delivers to one of them."""
    shown = imap_name(name)
    same = [f for f in usage.folders if f.name == name or imap_name(f.name) == shown]
    if len(same) < 2:
        return same[0] if same else None
    return FolderUsage(name, max(f.bytes for f in same), max(f.messages for f in same))


def rekeyed(kept: str) -> str:
    """The key of a folder a state file names: one this version wrote is its own key; one an
    older version wrote (the name an IMAP server shows, decoded already) is keyed without being
    decoded again (``R&Dev-Team``)."""
    return kept if folder_key(kept) == kept else ascii_lower(kept).replace("&", "&-")


def folder_key(name: str) -> str:
    """The key room held for a folder is summed under: the name an IMAP server shows, its A-Z
    lowered. Every spelling that reaches the folder holds its room in one place: Postfix's as
    sent, Exim's lowered, one asked before the folder was made and after, by any MX host. An
    ``&`` stays ``&-``, as an IMAP server keeps it: a key is its own key (a restart keys again
    what it restores)."""
    return ascii_lower(imap_name(name)).replace("&", "&-")


def _lowered(request: PolicyRequest) -> bool:
    """Whether the MTA lowered the A-Z of the recipient's local part before asking: Exim's
    ``$local_part`` is in lower case in its ACLs (``roomy+Archive@`` arrives as ``roomy+archive``)
    while its routers deliver into ``.Archive`` as sent. Postfix keeps the case (and sends
    ``protocol_name``); its folder details are matched as sent."""
    return "protocol_name" not in request.attributes


def _spells(on_disk: str, lowered: str) -> bool:
    """Whether a folder detail whose A-Z the MTA lowered may name the folder ``on_disk``: as the
    name is kept (``gel&apy-scht``, Exim's lowering of ``Gel&APY-scht``) or as an IMAP server
    shows it (``gelöscht``). Only A-Z: Exim lowers nothing else (``ÄRGER`` is ``Ärger``)."""
    wanted = ascii_lower(lowered)
    return wanted == ascii_lower(on_disk) or wanted == ascii_lower(imap_name(on_disk))


def _spellings(usage: MailboxUsage, lowered: str) -> list[str]:
    """The folders on disk a detail whose A-Z the MTA lowered may name."""
    return [f.name for f in usage.folders if _spells(f.name, lowered)]


@dataclass(frozen=True)
class Outcome:
    address: str
    decision: Decision
    usage: Usage | None


class _Ask(NamedTuple):
    """The recipient checks one request asks for: at RCPT one recipient with the declared size;
    at DATA one recipient (Exim) or the whole message (Postfix: ``whole``, with the number of
    recipients the MTA accepted), with the real size."""

    stage: Stage
    recipients: tuple[str, ...]
    size: int | None
    whole: bool = False
    recipient_count: int = 1
    let_in: int = 1  # the RCPTs of the message that the checks let in (see message_verdict)
    # At DATA: the answer is this recipient's alone (Exim's PRDR); else one answer for the
    # message, which a recipient refused for its client's share may get all the same.
    per_recipient: bool = False
    lowered: bool = False  # the MTA lowered the local parts' A-Z (see _lowered)
    spelling: str | None = None  # the local part as the client wrote it (see _target)


@dataclass(frozen=True)
class _Target:
    """A recipient found in the snapshot: its mailbox, the folder asked for, and the reading
    whose maildirsize is to be read live (None: nothing to read)."""

    snapshot: Snapshot
    mailbox: Mailbox
    folder: str | None
    live: Reading | None
    # Which copy of the message the recipient gets: "" for the mailbox's own local part (at its
    # domain or an alias domain), else the local part as sent (``user+a``, ``user+``, ``user-a``,
    # ``User``: each delivered apart).
    copy: str = ""
    # The MTA lowered the folder's A-Z, and it is not one folder on disk: any spelling may be it.
    lowered: bool = False
    # The agent saves mail for this detail with no quota check (see PolicyService._left_out):
    # only the folder's own limits weigh it, if it has any.
    left_out: bool = False


class PolicyService:
    def __init__(self, config: Config, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.snapshot = Snapshot()
        self.reservations = Reservations(config.policy.reservation_seconds, config.policy.max_reservations)
        # Recipients let in at RCPT, per transaction: Postfix names them at END-OF-MESSAGE only
        # when there is one. As many transactions as reservations, at most.
        self.recipients = Recipients(RECIPIENTS_SECONDS, config.policy.max_reservations)
        self._once = itertools.count()
        # The held room of Postfix transactions whose policy connection closed, and when it goes.
        self._closing: dict[Transaction, float] = {}
        self.maildirsize = MaildirsizeReader(spool_roots(config.spool))
        # The delivery agent's rules (where a full mailbox starts, its grace by default, how it
        # sizes a message): worked out once per config, not on every request.
        self._profile = profile_for(config.spool)
        self._grace, self._boundary = grace_for(config), self._profile.boundary
        self.files = FileReads(
            self.maildirsize.roots,
            config.policy.file_timeout,
            config.policy.refresh_seconds,
            metrics.maildirsize_lookups,
        )
        self._stale_log = Throttled(log)
        self._unreadable_log = Throttled(log)
        # Maildir path -> the last value read from its maildirsize: what decides once the file
        # can no longer be read. One a mailbox, kept for the daemon's life.
        self._last_read: dict[str, Usage] = {}
        # Set when usage is tracked live: told of a local delivery (Exim's event_action).
        self.delivery_hint: Callable[[str], bool] | None = None
        self._echoes = Echoes()
        # Set by the daemon when [shared] url is: checks are weighed and held there while it is up.
        self.shared: SharedState | None = None
        # The folder rules the cache of _lowered_limits was made for, and the cache.
        self._lowered_for: object = None
        self._lowered_cache: Callable[[str], Limits | None] = lambda name: None

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._profile = profile_for(config.spool)
        self._grace, self._boundary = grace_for(config), self._profile.boundary
        self.recipients.most = config.policy.max_reservations
        self.maildirsize.roots = spool_roots(config.spool)
        self.files.set_roots(self.maildirsize.roots)
        self.reservations.seconds = config.policy.reservation_seconds
        self.reservations.max_reservations = config.policy.max_reservations
        self.files.timeout = config.policy.file_timeout
        self.files.keep_seconds = config.policy.refresh_seconds

    def maildirsize_paths(self, limit: int) -> list[str]:
        """The mailboxes whose maildirsize a request would read, at most ``limit`` of them, to read
        ahead of requests (:meth:`FileReads.warm`). Goes through the snapshot: run it in a thread."""
        if not self.config.policy.use_maildirsize:
            return []  # not a pass over every reading for nothing
        paths = []
        for reading in self.snapshot.readings.values():
            if self._reads_live(reading):
                paths.append(reading.path)
                if len(paths) >= limit:
                    break
        return paths

    def _reads_live(self, reading: Reading | None) -> bool:
        """Whether a request reads the mailbox's maildirsize (the last scan found it agreeing)."""
        return reading is not None and self.config.policy.use_maildirsize and self.maildirsize.wanted(reading)

    def answer(self, request: PolicyRequest, session: Session | None = None) -> str:
        """The action for one request, reading a maildirsize in this thread (``quotagate check``,
        tests). The daemon uses :meth:`respond`, which never blocks on a file. Whatever goes
        wrong inside becomes DUNNO: the MTA then carries on as it would without quotagate, and no
        mail is lost to a bug of ours."""
        started = time.perf_counter()
        try:
            transaction = self._transaction(request, session)
            ask = self._ask(started, request, transaction)
            if isinstance(ask, str):
                return ask
            outcomes = [
                self.check(r, ask.size, transaction, ask.stage, ask.per_recipient, ask.lowered, ask.spelling)
                for r in ask.recipients
            ]
            return self._answer(started, request, ask, transaction, outcomes)
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    def respond(self, request: PolicyRequest, session: Session | None = None) -> str | asyncio.Future[str]:
        """:meth:`answer` for the event loop: at once, or (when a mailbox's maildirsize must be
        read) a future the reader process resolves within file_timeout."""
        started = time.perf_counter()
        try:
            transaction = self._transaction(request, session)
            ask = self._ask(started, request, transaction)
            if isinstance(ask, str):
                return ask
            targets = [self._target(r, ask.lowered, ask.spelling) for r in ask.recipients]
            lives = [
                None if isinstance(t, Outcome) or t.live is None else self.files.start(t.live.path, _same)
                for t in targets
            ]
            waiting = [live for live in lives if isinstance(live, asyncio.Future)]
            if not waiting:
                return self._conclude(started, request, ask, transaction, targets, cast("list[Live]", lives))

            async def read() -> str:
                # Every read settles (a value, or Unreadable once file_timeout passed).
                await asyncio.gather(*waiting)
                known = [live.result() if isinstance(live, asyncio.Future) else live for live in lives]
                answer = self._conclude(started, request, ask, transaction, targets, known)
                return answer if isinstance(answer, str) else await answer  # the shared ledger weighs

            return asyncio.ensure_future(read())
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
                self._end(previous, with_data=False)
            if session.on_close is None and "protocol_name" in request.attributes:  # Postfix's, not Exim's
                session.on_close = partial(self._connection_closed, session)
        if self._closing:
            self._closing.pop(transaction, None)  # it goes on, on a new connection (Postfix closed the last)
            self._let_go_closed(self.clock())
        return transaction

    def _connection_closed(self, session: Session) -> None:
        """A Postfix policy connection closed: its smtpd process exited (after a QUIT, its
        max_idle or max_use), and with it the transaction it last asked about, unless a message
        of it was accepted (in flight, kept). Its held room goes :data:`CLOSED_GRACE` seconds
        later: kept to reservation_seconds, a client that quits after RCPT would keep it from
        every other client; let go at once, a transaction whose connection Postfix closed and
        opened again (smtpd_policy_service_max_idle or max_ttl) would lose it before its
        END-OF-MESSAGE. Its recipients are kept for that END-OF-MESSAGE."""
        transaction = session.transaction
        if transaction is None or not self.reservations.holds(transaction):
            return
        now = self.clock()
        self._closing.pop(transaction, None)  # due in the order they closed: one look finds what is due
        self._closing[transaction] = now + CLOSED_GRACE
        while len(self._closing) > self.config.policy.max_reservations:
            self._closing[next(iter(self._closing))] = now  # bounded: the oldest go now
            self._let_go_closed(now)
        self._let_go_closed(now)

    def restore(self, saved: Iterable[Reservation], now: float) -> int:
        """Take the reservations an earlier run saved; how many were kept. The room they hold
        before DATA is their transactions', whose policy connections closed with that run: it
        goes :data:`CLOSED_GRACE` seconds from now unless the transaction asks again (Postfix's
        smtpd on a new connection; Exim's next check, or its end), as when Postfix closes a
        connection, not reservation_seconds later for a client that has gone meanwhile."""
        kept = self.reservations.restore(saved, now)
        for transaction in dict.fromkeys(r.transaction for r in self.reservations if r.state == "held"):
            self._closing[transaction] = now + CLOSED_GRACE
        return kept

    def _let_go_closed(self, now: float) -> None:
        """The held room of the transactions whose Postfix connection closed CLOSED_GRACE ago
        goes: looked at on every request and every close (no timer per connection)."""
        while self._closing:
            transaction, due = next(iter(self._closing.items()))
            if due > now:
                return
            del self._closing[transaction]
            self.reservations.end(transaction, with_data=False, now=now)

    def _end(self, transaction: Transaction, with_data: bool, size: int | None = None) -> None:
        self.reservations.end(transaction, with_data=with_data, now=self.clock(), size=size)
        self.recipients.forget(transaction)

    def _ask(self, started: float, request: PolicyRequest, transaction: Transaction) -> str | _Ask:
        """The checks a request asks for, or the answer to one that asks for none."""
        if request.request == DELIVERY_HINT:
            self._hint(request.recipient, self._exim_size(request))
            return self._done(started, Action.DUNNO, DUNNO)
        if request.request == TRANSACTION_END:
            self._end(transaction, with_data=False)
            return self._done(started, Action.DUNNO, DUNNO)
        if request.request == DATA_CHECK:
            prdr = request.attributes.get("prdr") == "yes"
            # As Exim asked at RCPT ($local_part: in lower case), not as $recipients has it:
            # found under another spelling, the recipient's hold would not be replaced.
            local, at, domain = request.recipient.rpartition("@")
            asked = f"{ascii_lower(local)}{at}{domain}"
            spelling = request.attributes.get("spelling")
            return _Ask("data", (asked,), self._exim_size(request), per_recipient=prdr, lowered=True, spelling=spelling)
        if request.protocol_state == END_OF_MESSAGE:
            return self._end_of_message(started, request, transaction)
        if request.protocol_state not in _CHECKED_STATES:
            return self._done(started, Action.DUNNO, DUNNO)
        spelling = request.attributes.get("spelling")
        return _Ask("rcpt", (request.recipient,), request.size, lowered=_lowered(request), spelling=spelling)

    def _end_of_message(self, started: float, request: PolicyRequest, transaction: Transaction) -> str | _Ask:
        """Postfix's END-OF-MESSAGE (it sends ``recipient_count``): the message with its real
        size, for the recipients let in at RCPT (named in the request only when there is one).
        Without a count (the last statement of Exim's DATA ACL, which checked each recipient
        already), or without the recipients known (the daemon restarted meanwhile), the
        message was accepted: its room goes in flight."""
        count = _number(request.attributes.get("recipient_count", ""))
        seen = self.recipients.take(transaction, self.clock()) if count is not None else None
        named = count == 1 and bool(request.recipient)
        let_in = LetIn((request.recipient,), 1) if named else seen
        if count is None or let_in is None or not let_in.recipients:
            # Exim's tell of an accepted message sends what its DATA check sends (no count).
            real = self._exim_size(request) if count is None else request.size
            self._end(transaction, with_data=True, size=real if known_size(request.size) is not None else None)
            return self._done(started, Action.DUNNO, DUNNO)
        return _Ask("data", let_in.recipients, request.size, whole=True, recipient_count=count, let_in=let_in.rcpts)

    def _exim_size(self, request: PolicyRequest) -> int | None:
        """The size Exim's DATA ACL sends, as the mailbox's delivery agent will count it."""
        size = request.size
        if size is None:
            return None
        added = _number(request.attributes.get("size_added", "")) or 0
        lines = _number(request.attributes.get("message_linecount", "")) or 0
        return exim_data_size(self._profile, size, added, lines)

    def delivered(self, address: str, size: int | None = None, source: str = "watch") -> None:
        """A message landed in ``address`` (a watch event, Exim's hint: ``source``), of ``size``
        bytes when known: the room held for it can go once a reading includes it. The other
        source's word of the same delivery is not another one (see :mod:`echoes`)."""
        now = self.clock()
        if size is not None and not self._echoes.first(address, size, source, now):
            log.debug("delivery to %s (%d bytes) told by the watch and the hint: counted once", address, size)
            return
        self.reservations.delivered(address, now, size)

    def _conclude(
        self,
        started: float,
        request: PolicyRequest,
        ask: _Ask,
        transaction: Transaction,
        targets: list[_Target | Outcome],
        lives: list[Live],
    ) -> str | asyncio.Future[str]:
        """The answer once the live usage (if any was wanted) is known: on the loop, no I/O; a
        future while the shared ledger weighs a check."""
        try:
            decided = [
                t
                if isinstance(t, Outcome)
                else self._decide(t, ask.size, live, transaction, ask.stage, per_recipient=ask.per_recipient)
                for t, live in zip(targets, lives, strict=True)
            ]
            outcomes = [d for d in decided if isinstance(d, Outcome)]
            if len(outcomes) == len(decided):
                return self._answer(started, request, ask, transaction, outcomes)
            return asyncio.ensure_future(
                self._settle_shared(started, request, ask, transaction, targets, lives, decided)
            )
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    async def _settle_shared(
        self,
        started: float,
        request: PolicyRequest,
        ask: _Ask,
        transaction: Transaction,
        targets: list[_Target | Outcome],
        lives: list[Live],
        decided: list[Outcome | tuple[Claim, asyncio.Future[Weighed | None]]],
    ) -> str:
        """The answer from what the shared ledger weighed; decided alone where it failed."""
        try:
            outcomes = []
            for target, live, d in zip(targets, lives, decided, strict=True):
                if isinstance(d, Outcome):
                    outcomes.append(d)
                    continue
                claim, weighing = d
                weighed = await weighing
                if weighed is None:
                    assert isinstance(target, _Target)
                    alone = self._decide(
                        target, ask.size, live, transaction, ask.stage, alone=True, per_recipient=ask.per_recipient
                    )
                    assert isinstance(alone, Outcome)
                    outcomes.append(alone)
                else:
                    decision, usage = settle(claim, weighed, self.clock())
                    if decision.reason == STALE:  # counted and said as when decided here
                        self._said_stale(claim.mailbox.address, claim.usage, self.clock())
                    if weighed.capped and not weighed.held:  # counted as the daemon's own are
                        self.reservations.capped += 1
                    outcomes.append(Outcome(claim.mailbox.address, decision, usage))
            return self._answer(started, request, ask, transaction, outcomes)
        except Exception:
            log.exception("internal error answering for %r: DUNNO", request.recipient)
            return self._failed(started)

    def _answer(
        self, started: float, request: PolicyRequest, ask: _Ask, transaction: Transaction, outcomes: list[Outcome]
    ) -> str:
        """The answer to a request from the decisions for its recipients. No I/O."""
        for outcome in outcomes:
            self.metrics.checked(ask.stage, outcome.decision.action.value)
        if ask.whole:
            return self._whole_message(started, ask, transaction, outcomes)
        (outcome,) = outcomes
        if ask.stage == "rcpt" and outcome.decision.action is Action.ACCEPT and request.attributes.get("instance"):
            # Only recipients with room: one with no opinion (not a mailbox quotagate knows) may
            # be refused by Postfix after this check, which the daemon never hears of; counted,
            # a bogus recipient would make a message for full mailboxes one with a recipient
            # "not refused". Accepted by Postfix, it is a recipient not remembered: no refusal.
            self.recipients.add(transaction, request.recipient, self.clock())
        if outcome.decision.action in _REFUSED:
            self._log_refusal(outcome, ask.stage)
        return self._finish(started, outcome)

    def _whole_message(self, started: float, ask: _Ask, transaction: Transaction, outcomes: list[Outcome]) -> str:
        """One answer for a message (Postfix cannot refuse it per recipient): refused when every
        recipient is refused; otherwise accepted, and the delivery agent's own quota decides
        for a recipient that is full."""
        verdict = message_verdict((o.decision.action for o in outcomes), ask.recipient_count, ask.let_in)
        refused = [o for o in outcomes if o.decision.action in _REFUSED]
        for outcome in refused:
            self._log_refusal(outcome, ask.stage, whole=verdict in _REFUSED)
        if verdict not in _REFUSED:
            self._end(transaction, with_data=True, size=known_size(ask.size))
            return self._done(started, verdict, DUNNO)
        self._end(transaction, with_data=False)
        log.info(
            "refused a message at %s: every one of its %d recipients is refused", label(ask.stage), ask.recipient_count
        )
        chosen = next(o for o in refused if o.decision.action is verdict)
        return self._done(started, verdict, self._reply(chosen), chosen.usage)

    def _finish(self, started: float, outcome: Outcome) -> str:
        return self._done(started, outcome.decision.action, self._reply(outcome), outcome.usage)

    def _failed(self, started: float) -> str:
        self.metrics.errors.inc()
        return self._done(started, Action.DUNNO, DUNNO)

    def _hint(self, recipient: str, size: int | None) -> None:
        try:
            address = normalize(recipient)
        except BadAddress:
            log.debug("delivery hint for %r: not an address", recipient)
            return
        reading = self.snapshot.readings.get(address)
        if reading is not None:  # its maildirsize changed (on NFS, no event says so)
            self.files.forget(reading.path)
        self.delivered(address, size, "hint")
        if self.delivery_hint is not None:
            self.delivery_hint(address)

    def check(
        self,
        recipient: str,
        size: int | None,
        transaction: Transaction | None = None,
        stage: Stage = "rcpt",
        per_recipient: bool = False,
        lowered: bool = False,
        spelling: str | None = None,
    ) -> Outcome:
        """The decision for one recipient and declared size, holding room when it is accepted;
        ``lowered``: asked as Exim asks (see :func:`_lowered`); ``spelling``: see :meth:`_target`.

        Reads a maildirsize in this thread: for ``quotagate check`` and tests, not the loop.
        """
        target = self._target(recipient, lowered, spelling)
        if isinstance(target, Outcome):
            return target
        live = None if target.live is None else self.maildirsize.read(target.live.path)
        transaction = transaction or Transaction("local", f"check-{next(self._once)}")
        outcome = self._decide(target, size, live, transaction, stage, alone=True, per_recipient=per_recipient)
        assert isinstance(outcome, Outcome)
        return outcome

    def mailbox_of(self, recipient: str) -> str | None:
        """The address of the mailbox a recipient reaches (through a folder detail or an alias
        domain), or None when it reaches none. No I/O."""
        target = self._target(recipient)
        return None if isinstance(target, Outcome) else target.mailbox.address

    def folder_of_copy(self, copy: str) -> str:
        """The folder with limits of its own a copy (a local part as sent) is delivered to, by
        its key (:func:`folder_key`); "" for none."""
        split = without_detail(f"{copy}@localhost", self.config.policy.folder_delimiter)
        # Which MTA asked is not kept: as spelled, or lowered by Exim.
        if split is None or self._lowered_limits(split[1]) is None:
            return ""
        return folder_key(split[1])

    def _target(self, recipient: str, lowered: bool = False, spelling: str | None = None) -> _Target | Outcome:
        """The mailbox ``recipient`` names, or the outcome when there is none. No I/O.
        ``lowered``: the MTA lowered its local part's A-Z (see :func:`_lowered`): a folder detail
        is the one folder on disk it may name, else any spelling of it. ``spelling``: the local
        part as the client wrote it, when the MTA asks about it lowered and unquoted (Exim):
        Exim delivers ``Roomy@`` and ``"roomy"@`` apart from ``roomy@``, each a copy of its own."""
        snapshot = self.snapshot
        try:
            address = normalize(recipient)
        except BadAddress:
            return Outcome(recipient, Decision(Action.DUNNO, "not an address"), None)
        mailbox, folder = self._routed(snapshot, address, recipient)
        if mailbox is None:
            return Outcome(address, Decision(Action.DUNNO, "unknown recipient"), None)
        reading = snapshot.readings.get(mailbox.address)
        # As sent: Postfix keeps its case, and delivers Roomy@ and roomy@ (roomy+A@ and roomy+a@) apart.
        local = recipient.strip().rpartition("@")[0]
        if spelling is not None and ascii_lower(dequoted(spelling)) == local:
            local = spelling  # the recipient itself as written, not an alias's target
        copy = "" if local == mailbox.address.rpartition("@")[0] else local
        lowered = lowered and folder is not None
        # Only as Postfix asks, the detail as sent: which folder an Exim delivery lands in is the
        # admin's transport's doing (its $local_part_suffix is lowered and holds the delimiter).
        left_out = folder is not None and not lowered and self._left_out(folder)
        if lowered and folder is not None and reading is not None:
            spellings = _spellings(reading.usage, folder)
            if spellings:
                # One folder to an IMAP server (twins such as .Gelöscht beside .Gel&APY-scht are
                # weighed together): the folder it names, matched as it is from here on. Several
                # (its owner made .Archive and .archive): the router delivers into the one the
                # sender wrote, which cannot be told: the mailbox's own check alone.
                one = len({imap_name(name) for name in spellings}) == 1
                folder, lowered = spellings[0] if one else None, False
        live = reading if self._reads_live(reading) else None
        return _Target(snapshot, mailbox, folder, live, copy, lowered, left_out)

    def _decide(
        self,
        target: _Target,
        size: int | None,
        live: Live,
        transaction: Transaction,
        stage: Stage = "rcpt",
        alone: bool = False,
        per_recipient: bool = False,
    ) -> Outcome | tuple[Claim, asyncio.Future[Weighed | None]]:
        """The decision, once the live usage (if any was wanted) is known. No I/O. With shared
        state (and not ``alone``), the claim sent to it and the future of its answer instead.

        At DATA the size is the message's own, and the answer replaces what the transaction
        held for the mailbox at RCPT (never adds to it): that room does not count against this
        check, an accepted message holds its real size in its place, and a refused one lets
        it go (that recipient gets no copy, or the delivery agent decides).
        """
        snapshot, mailbox, folder = target.snapshot, target.mailbox, target.folder
        if isinstance(live, Unreadable):
            # Its owner can make it so at will (a FIFO, a symlink, a second link), as a dead
            # mount can: the last value read from it (else the stored reading) decides, as of its
            # read (a mailbox that was over stays over; one too old is DUNNO), never the owner's
            # say-so.
            self.metrics.unreadable.inc()
            self._unreadable_log.warning(
                "maildirsize of %s: %s: deciding on the last reading", mailbox.address, live.reason
            )
            live = None if target.live is None else self._last_read.get(target.live.path)
        elif isinstance(live, Usage) and target.live is not None:
            self._last_read[target.live.path] = live
        limits, usage = self._limits_and_usage(snapshot, mailbox, folder, live, target.lowered)
        if target.left_out and limits is None:
            # The delivery agent saves into a folder left out of the quota with no check at all
            # (Dovecot's Trash:ignore, Courier's Trash), however full the mailbox: nothing to
            # refuse, and none of the mailbox's room to hold.
            left_out = Decision(Action.DUNNO, "the folder is left out of the quota", Numbers(size=known_size(size)))
            return Outcome(mailbox.address, left_out, usage)
        now = self.clock()
        stale = usage is not None and usage_age(usage, now) > self.config.policy.max_usage_age
        # A maildirsize as of its read (kept between requests, it is as old as that read).
        measured_at = usage.measured_at if usage else 0.0
        # Mail for a folder left out of the total takes none of the mailbox's room: weighed
        # against the folder's own limit, here, and held nowhere (the ledger weighs mailboxes).
        shared = None if target.left_out else self.shared
        if shared is not None and shared.up and not alone and Claim.wanted(mailbox, limits, usage):
            claim = self._claim(target, size, live, transaction, limits, usage, now, stage, per_recipient, stale)
            if claim is not None:
                return claim, shared.claim(claim)
        if stale and usage is not None:  # not by its own clock; a fresher reading in the ledger would do
            self._said_stale(mailbox.address, usage, now)
            return Outcome(mailbox.address, Decision(Action.DUNNO, STALE), usage)
        s = known_size(size)
        copy = target.copy
        # A folder with limits of its own, by its key (Gel&APY-scht is Gelöscht, Archive archive).
        folder = folder_key(target.folder or "") if limits is not None else ""
        held = self._held(transaction, mailbox.address, copy, folder, now, measured_at, asked_again=s is not None)
        judge = partial(self._judge, target, limits, usage, size, live)
        decision, usage = judged_with(judge, held)
        if stage == "data" and self.shared is not None and self.shared.up:
            # The room is held in the shared ledger (from RCPT, in flight once the transaction
            # ends with data): held here too, it would be written back to it after an outage and
            # count every delivered message twice.
            return Outcome(mailbox.address, decision, usage)
        holds = self.config.policy.reservation_seconds and not target.left_out
        if stage == "data" and s is not None and decision.action in _REFUSED:
            self.reservations.let_go(transaction, mailbox.address, copy)
            if holds and not per_recipient:
                self._set_aside(judge, transaction, mailbox.address, copy, folder, s, now)
        if decision.action is Action.ACCEPT and s is not None and holds:
            share = self.config.policy.client_hold
            cap_bytes, cap_messages = client_caps(share, mailbox.limits)
            folder_caps = client_caps(share, limits) if limits is not None else None  # a folder's own share
            holding = self.reservations.hold(
                transaction, mailbox.address, s, now, cap_bytes, cap_messages, copy, folder, folder_caps
            )
            if not holding:
                # This client already holds its share of the mailbox's room before DATA: letting
                # more in without holding it would let it overfill the mailbox; try again later.
                decision = Decision(Action.DEFER, "the client holds its share of this mailbox", decision.numbers)
                if stage == "data":  # with PRDR refused: no copy, nor its room
                    self.reservations.let_go(transaction, mailbox.address, copy)
                    if not per_recipient:  # it fits: it lands if the message goes to the others
                        self._set_aside(judge, transaction, mailbox.address, copy, folder, s, now)
        return Outcome(mailbox.address, decision, usage)

    def _set_aside(
        self,
        judge: Callable[[Held], tuple[Decision, Usage | None]],
        transaction: Transaction,
        mailbox: str,
        copy: str,
        folder: str,
        size: int,
        now: float,
    ) -> None:
        """A copy refused at DATA (or deferred: its client holds its share) when the message has
        one answer for all its recipients (no PRDR): accepted for its other recipients, the
        message reaches this one too, whose delivery agent lets it in if it fits with what lands
        before it (mail in flight, the message's other copies), whatever other transactions
        hold. Then its room goes in flight with the message's, though nothing is held for it."""
        landing = Held(*self.reservations.landing(transaction, mailbox, copy, folder))
        if judge(landing)[0].action is Action.ACCEPT:
            self.reservations.set_aside(transaction, mailbox, size, now, copy, folder)

    def _held(
        self,
        transaction: Transaction,
        mailbox: str,
        copy: str,
        folder: str,
        now: float,
        measured_at: float,
        asked_again: bool,
    ) -> Held:
        """The room held against a check for this copy (and ``folder``, a folder with limits of
        its own, when not ""). ``asked_again`` (with a size: at DATA, the real one): the
        transaction's own hold for the copy is weighed in its place, not beside it."""
        reserved = self.reservations.held(mailbox, now, measured_at)
        in_folder = self.reservations.held_in(mailbox, folder) if folder else Reserved()
        mine = self.reservations.mine(transaction, mailbox, copy) if asked_again else None
        if mine is None:
            return Held(reserved, in_folder)
        reserved = Reserved(reserved.bytes - mine.bytes, reserved.messages - 1)
        if folder and mine.folder == folder:
            in_folder = Reserved(in_folder.bytes - mine.bytes, in_folder.messages - 1)
        return Held(reserved, in_folder)

    def _judge(
        self,
        target: _Target,
        limits: Limits | None,
        usage: Usage | None,
        size: int | None,
        live: Usage | None,
        held: Held,
    ) -> tuple[Decision, Usage | None]:
        """The decision with ``held`` room held, under the delivery agent's rules (where a
        full mailbox starts, its grace by default), and the usage it was taken on."""
        mailbox, grace, boundary = target.mailbox, self._grace, self._boundary
        if limits is None:
            return decide(mailbox, usage, size, held.mailbox, grace, boundary=boundary), usage
        decision = decide(mailbox, usage, size, held.folder, grace, limits, boundary=boundary)
        if decision.action is Action.ACCEPT and not target.left_out:  # else the folder's rule alone
            # The folder's rule lets it in; the mailbox's own limit still holds.
            _, total = self._limits_and_usage(target.snapshot, mailbox, None, live)
            whole = decide(mailbox, total, size, held.mailbox, grace, boundary=boundary)
            if whole.action is Action.REJECT:
                return whole, total
        return decision, usage

    def _claim(
        self,
        target: _Target,
        size: int | None,
        live: Usage | None,
        transaction: Transaction,
        limits: Limits | None,
        usage: Usage | None,
        now: float,
        stage: Stage,
        per_recipient: bool = False,
        stale: bool = False,
    ) -> Claim | None:
        """The check as the shared ledger weighs it: the whole mailbox's usage (which a storage
        host's fresher one may replace) and, for local+folder, the folder's rule and usage; at
        DATA, in place of what the transaction holds (see :meth:`_decide`)."""
        if usage is None:
            return None
        whole = usage if limits is None else self._limits_and_usage(target.snapshot, target.mailbox, None, live)[1]
        if whole is None:
            return None
        policy = self.config.policy
        return Claim(
            target.mailbox,
            whole,
            measured_ago(whole, now),
            size,
            transaction,
            bool(policy.reservation_seconds),
            policy.client_hold,
            self._grace,
            self._boundary,
            None if limits is None else ClaimedFolder(folder_key(target.folder or ""), limits, usage),
            at_data=stage == "data",
            per_recipient=per_recipient,
            max_usage_age=policy.max_usage_age,
            copy=target.copy,
            stale=stale,
        )

    def _said_stale(self, address: str, usage: Usage, now: float) -> None:
        """Usage nobody confirmed for max_usage_age (store down, watch dead, scans failing) could
        refuse a mailbox emptied since: not believed (DUNNO), counted, and logged once a minute."""
        limit = self.config.policy.max_usage_age
        self.metrics.stale.inc()
        self._stale_log.warning(
            "usage of %s is %.0fs old, more than max_usage_age (%gs): DUNNO", address, usage_age(usage, now), limit
        )

    def _routed(self, snapshot: Snapshot, address: str, recipient: str) -> tuple[Mailbox | None, str | None]:
        """:meth:`_mailbox`, else the mailbox a routing spelling leads to (see :func:`unrouted`):
        Postfix delivers ``full%example.org@example.org`` to ``full@example.org``, which a
        client would otherwise get past its check by writing so. A few levels at most."""
        for _ in range(_ROUTING_LEVELS):
            found = self._mailbox(snapshot, address, recipient)
            if found[0] is not None:
                return found  # every known recipient: nothing more on the request path
            # Postfix rewrites only once it has stripped a domain of its own: to another, such
            # an address is relayed as written.
            domain = address.rpartition("@")[2]
            ours = domain in snapshot.domains or domain in snapshot.domain_aliases.targets
            routed = unrouted(recipient) if ours else None
            if routed is None:
                return found
            try:
                address, recipient = normalize(routed), routed
            except BadAddress:
                return found
        return None, None

    def _mailbox(self, snapshot: Snapshot, address: str, recipient: str) -> tuple[Mailbox | None, str | None]:
        """The mailbox for ``address`` (see :meth:`_in_domain`), at its domain or, for an alias
        domain (PostfixAdmin's), at the domain it reaches: the MTA asks about the recipient as the
        client sent it, before rewriting it.

        The folder is taken from the recipient as sent: Maildir++ folder names keep their case.
        """
        found = self._in_domain(snapshot, address, recipient)
        if found[0] is not None or not snapshot.domain_aliases.targets:
            return found
        split = without_detail(address, self.config.policy.folder_delimiter)
        reached = snapshot.domain_aliases.target(address, split[0] if split else None)
        if reached is None:
            return found
        return self._in_domain(
            snapshot, reached, f"{recipient.strip().rpartition('@')[0]}@{reached.rpartition('@')[2]}"
        )

    def _in_domain(self, snapshot: Snapshot, address: str, recipient: str) -> tuple[Mailbox | None, str | None]:
        """``address`` when it is an enabled mailbox; else, for ``local+folder@domain``, the
        mailbox ``local@domain`` and the folder (as the MTA's routers pass a disabled one by);
        else a disabled mailbox of that address (answered DUNNO), or none."""
        mailbox = snapshot.mailboxes.get(address)
        if mailbox is not None and mailbox.enabled:
            return mailbox, None
        found = self._with_detail(snapshot, recipient)
        return found if found[0] is not None or mailbox is None else (mailbox, None)

    def _with_detail(self, snapshot: Snapshot, recipient: str) -> tuple[Mailbox | None, str | None]:
        """The mailbox of ``local+folder@domain`` and the folder, or (None, None)."""
        split = without_detail(recipient, self.config.policy.folder_delimiter)
        if split is None:
            return None, None
        base, folder = split
        try:
            return snapshot.mailboxes.get(normalize(base)), folder
        except BadAddress:
            return None, None

    def _limits_and_usage(
        self,
        snapshot: Snapshot,
        mailbox: Mailbox,
        folder: str | None,
        live: Usage | None,
        lowered: bool = False,
    ) -> tuple[Limits | None, Usage | None]:
        reading = snapshot.readings.get(mailbox.address)
        if folder is not None and reading is not None:
            found = self._folder(reading.usage, folder, lowered)
            if found is not None:
                limits, held = found
                # A folder that does not exist yet is empty: the delivery agent creates it.
                used = Usage(held.bytes if held else 0, held.messages if held else 0, snapshot.fresh_at(reading))
                return limits, used
        if live is not None:
            return None, self._believed(snapshot, mailbox, live)
        return None, snapshot.stored_usage(mailbox.address)

    def _folder(self, usage: MailboxUsage, folder: str, lowered: bool) -> tuple[Limits, FolderUsage | None] | None:
        """The folder's own limits and usage; None when it has none. A detail whose A-Z the MTA
        lowered that is no folder on disk yet: the strictest rule its spellings meet."""
        if lowered:
            limits = self._lowered_limits(folder)
            return None if limits is None else (limits, None)
        limits = folder_limits(folder, self.config.folders)
        return None if limits is None else (limits, _folder_named(usage, folder))

    def _left_out(self, detail: str) -> bool:
        """Whether the delivery agent saves mail for ``local+detail@`` with no quota check: it
        saves a detail into its folder (``[policy] detail_folders``; else into INBOX), and that
        folder is one it leaves out of its quota (Courier's Trash; a folder Dovecot's quota rules
        ``:ignore``, which ``exclude = true`` rules stand for under its profiles)."""
        if not self.config.policy.detail_folders:
            return False
        profile = self._profile
        if detail in profile.excluded_folders:
            return True
        return profile.saves_excluded_unchecked and detail_excluded(detail, self.config.folders)

    def _lowered_limits(self, name: str) -> Limits | None:
        """:func:`lowered_folder_limits` under the config's rules, kept per name (a dozen rule
        matches for every Exim check of ``user+tag@``; a bounded cache: the tags are the senders')."""
        rules = self.config.folders
        if self._lowered_for is not rules:
            self._lowered_for = rules
            self._lowered_cache = lru_cache(maxsize=4096)(partial(lowered_folder_limits, rules=rules))
        return self._lowered_cache(name)

    def _believed(self, snapshot: Snapshot, mailbox: Mailbox, live: Usage) -> Usage:
        """A maildirsize read live; under a profile that counts the files, never less than the
        last reading, nor taken as a measurement of them: its owner can rewrite the file (in
        place, unseen by a scan), to claim less, or the same after a delivery (taken as
        measured now, it would release the room in flight of mail it leaves out). Deliveries
        still show at once (the claims grow); their room in flight, and deletions, go with the
        watcher's or the next scan's reading."""
        if self._profile.trusts_maildirsize:
            return live
        stored = snapshot.stored_usage(mailbox.address)
        if stored is None:
            return live
        claims, reading = (live.bytes, live.messages), (stored.bytes, stored.messages)
        if claims != reading and claims[0] >= reading[0] and claims[1] >= reading[1]:
            return Usage(*claims, stored.measured_at, LIVE_OVER_FILES)  # grown: deliveries, current
        if claims != reading:
            self.metrics.claims_below_files.inc()
        # Claiming no more than the reading, the file adds nothing: the reading stands, as old as it is.
        most = max(claims[0], reading[0]), max(claims[1], reading[1])
        return Usage(*most, stored.measured_at, stored.source)

    def _reply(self, outcome: Outcome) -> str:
        """The text the MTA gets for one recipient's decision."""
        decision = outcome.decision
        policy = self.config.policy
        if decision.action is Action.DEFER:
            return policy.busy_reply
        if decision.action is not Action.REJECT:
            return DUNNO
        return reply_for(decision, policy)

    def _log_refusal(self, outcome: Outcome, stage: Stage, whole: bool = True) -> None:
        """One line per refused recipient, naming the stage; ``whole=False``: the message was
        accepted for its other recipients all the same (Postfix, one answer per message)."""
        decision = outcome.decision
        at = label(stage)
        if decision.action is Action.DEFER:
            log.info("deferred %s: %s (at %s)", outcome.address, decision.reason, at)
            return
        n = decision.numbers
        age = f"{usage_age(outcome.usage, self.clock()):.1f}s" if outcome.usage else "?"
        log.info(
            "refused %s: %s (at %s%s; used %s of %s bytes, %s reserved, size %s, usage from %s, %s old)",
            outcome.address,
            decision.reason,
            at,
            "" if whole else ", but the message was accepted for its other recipients",
            n.used_bytes,
            n.limit_bytes,
            n.reserved_bytes,
            n.size or "unknown",
            n.source,
            age,
        )

    def _done(self, started: float, action: Action, text: str, usage: Usage | None = None) -> str:
        self.metrics.observe(
            action.value, time.perf_counter() - started, None if usage is None else usage_age(usage, self.clock())
        )
        return text


def _same(live: Live) -> Live:
    return live


def _number(text: str) -> int | None:
    """A count or size sent as decimal digits, or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)
