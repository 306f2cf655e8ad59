"""A check decided by shared state: what the daemon asks of it, and the decision from its answer.
Pure: the asking is :mod:`quotagate.policy.shared`'s.

The daemon cannot run :func:`quotagate.decide.decide` inside Redis, so it sends the rule as
ceilings (:func:`quotagate.decide.ceiling`): the shared ledger holds room only when the mailbox's
usage and the room every host holds are within them, in one atomic step. From what it answers
(the usage and room it weighed, whether it held) the daemon then works out the same decision, with
the same numbers and reasons, as it would alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from quotagate.decide import NOTHING_RESERVED, Ceiling, Held, Reserved, ceiling, decide, judged_with, known_size
from quotagate.model import Action, Boundary, Decision, Limits, Mailbox, Usage
from quotagate.policy.reservations import Transaction
from quotagate.sizes import Allowance

UNLIMITED = 2**62
SHARED_SOURCE = "shared"
STORE_SOURCE = "scan"  # a reading loaded from the store (quotagate.policy.live)
# A maildirsize read at request time, under a profile that counts the files: current, but at
# least a reading's numbers, with that reading's time (see PolicyService._believed).
LIVE_OVER_FILES = "maildirsize over the files"


def client_caps(share: Allowance, limits: Limits) -> tuple[int, int]:
    """The room (bytes, messages) one client may hold in a mailbox, or a folder with limits of
    its own, before DATA: ``client_hold`` of its limits."""
    return (
        share.of(limits.bytes) if limits.bytes else UNLIMITED,
        max(1, int(share.fraction * limits.messages)) if limits.messages else UNLIMITED,
    )


class ClaimedFolder(NamedTuple):
    """The folder with limits of its own a recipient names (``local+folder``): its name, rule and usage."""

    name: str
    limits: Limits
    usage: Usage


@dataclass(frozen=True)
class Claim:
    """One recipient check: the mailbox, the usage this daemon has for it (``age`` seconds old
    by its own clock: only the age travels, never the time), and what to hold."""

    mailbox: Mailbox
    usage: Usage
    age: float
    size: int | None
    transaction: Transaction
    hold: bool  # reservation_seconds > 0
    client_hold: Allowance
    grace: Allowance
    boundary: Boundary
    folder: ClaimedFolder | None = None
    # At DATA: the message's real size, weighed and held in place of what its transaction holds
    # (never beside it), and that hold let go when it does not fit.
    at_data: bool = False
    per_recipient: bool = False  # at DATA with PRDR: refused for the client's share, no copy comes
    max_usage_age: float = 900.0  # [policy] max_usage_age: the shared ledger's reading, older, is not used
    copy: str = ""  # which copy of the message (the recipient's detail): see Reservation.copy
    # ``usage`` is older than max_usage_age by this host's clock: believed only in the form of a
    # fresher reading the ledger holds (a storage host's, by Redis's clock), else DUNNO.
    stale: bool = False

    @staticmethod
    def wanted(mailbox: Mailbox, limits: Limits | None, usage: Usage | None) -> bool:
        """Whether the shared state can change the decision at all: not for a disabled or
        unlimited mailbox, nor without usage (decide says DUNNO whatever is held)."""
        return mailbox.enabled and usage is not None and not (limits or mailbox.limits).unlimited

    def ceilings(self) -> tuple[Ceiling, Ceiling | None]:
        """The mailbox's ceiling, and the folder's when the recipient names one with a rule."""
        whole = ceiling(self.mailbox.limits, self.size, self.grace, self.boundary)
        if self.folder is None:
            return whole, None
        return whole, ceiling(self.folder.limits, self.size, self.grace, self.boundary)

    @property
    def own_clock(self) -> bool:
        """Whether the usage's age is by the clock of the host that measured it: a live read,
        or this host's own watch; not a reading from the store, which another host may have
        taken (its age then also holds the difference of the two clocks)."""
        return self.usage.source not in (STORE_SOURCE, LIVE_OVER_FILES)

    @property
    def holding(self) -> int:
        """Bytes to hold when it fits: none for an unknown size or with reservations off."""
        s = known_size(self.size)
        return s if s is not None and self.hold else 0


@dataclass(frozen=True)
class Weighed:
    """What the shared ledger answered: whether it fits, whether room was held (or the client was
    at its cap), the usage it went by and the room held before this check."""

    fits: bool
    held: bool
    capped: bool
    used_bytes: int
    used_messages: int
    age: float  # seconds, by the ledger's clock
    source: Literal["shared", "local"]
    reserved: Reserved
    in_folder: Reserved = NOTHING_RESERVED  # of it, held for the folder the recipient names (if it has limits)


STALE = "usage is older than max_usage_age"


def settle(claim: Claim, weighed: Weighed, now: float) -> tuple[Decision, Usage]:
    """The decision the daemon gives (the same rules as PolicyService._decide), and the usage
    it went by."""
    mailbox, size, grace, boundary = claim.mailbox, claim.size, claim.grace, claim.boundary
    whole = claim.usage
    if weighed.source == SHARED_SOURCE:
        whole = Usage(weighed.used_bytes, weighed.used_messages, now - weighed.age, SHARED_SOURCE)
    elif claim.stale:
        return Decision(Action.DUNNO, STALE), whole

    def judge(held: Held) -> tuple[Decision, Usage]:
        if claim.folder is None:
            return decide(mailbox, whole, size, held.mailbox, grace, boundary=boundary), whole
        _, limits, used = claim.folder
        decision = decide(mailbox, used, size, held.folder, grace, limits, boundary=boundary)
        if decision.action is Action.ACCEPT:
            total = decide(mailbox, whole, size, held.mailbox, grace, boundary=boundary)
            if total.action is Action.REJECT:
                return total, whole
        return decision, used

    decision, used = judged_with(judge, Held(weighed.reserved, weighed.in_folder))
    if decision.action is Action.ACCEPT and claim.holding and not weighed.held:
        if weighed.capped:
            # This client already holds its share of the mailbox's room before DATA.
            decision = Decision(Action.DEFER, "the client holds its share of this mailbox", decision.numbers)
        else:  # the ledger weighed differently (a bug of ours): no opinion rather than unheld room
            decision = Decision(Action.DUNNO, "the shared ledger held no room", decision.numbers)
    return decision, used


class SharedState(Protocol):
    """What PolicyService asks of the shared ledger (chosen at daemon start; None: in-process)."""

    @property
    def up(self) -> bool:
        """False while it cannot be reached: the daemon then decides with its own reservations."""

    def claim(self, claim: Claim) -> asyncio.Future[Weighed | None]:
        """Weigh and hold atomically for every host; None when the ledger failed (decide alone)."""
