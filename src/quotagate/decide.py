"""The decision rules (README, "The live check"), as pure functions: no I/O, no clocks, no stores."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import NamedTuple, TypeVar

from msgspec import Struct

from quotagate.model import Action, Boundary, Decision, Limits, Mailbox, Numbers, Refusal, Usage
from quotagate.sizes import Allowance


class Reserved(Struct, frozen=True):
    """Room held for messages accepted recently that may still be in flight."""

    bytes: int = 0
    messages: int = 0


NOTHING_RESERVED = Reserved()
NO_GRACE = Allowance()


def known_size(size: int | None) -> int | None:
    """The declared size, or None when it is unknown (absent, 0 or -1 as Exim passes it)."""
    if size is None or size <= 0:
        return None
    return size


def _fits(used: int, incoming: int, limit: int, grace: int, boundary: Boundary = Boundary.INCLUSIVE) -> bool:
    """Inclusive check: the message fits, or the mailbox is under its limit and grace covers it.

    Under :attr:`Boundary.EXCLUSIVE` (Exim's ``quota_is_inclusive = false``) the message's size
    does not count: it fits while usage is not past the limit (plus grace).
    """
    if boundary is Boundary.EXCLUSIVE:
        return used <= limit + grace
    return used + incoming <= limit or (used < limit and used + incoming <= limit + grace)


def _full(used: int, limit: int, boundary: Boundary) -> bool:
    """Exclusive check (no size known): no message of any size fits."""
    return used > limit if boundary is Boundary.EXCLUSIVE else used >= limit


def decide(
    mailbox: Mailbox | None,
    usage: Usage | None,
    size: int | None = None,
    reserved: Reserved = NOTHING_RESERVED,
    grace: Allowance = NO_GRACE,
    limits: Limits | None = None,
    boundary: Boundary = Boundary.INCLUSIVE,
) -> Decision:
    """Accept, reject or dunno for one recipient and one declared size.

    ``limits`` overrides the mailbox's own limits (a folder rule for ``local+folder``).
    ``boundary`` is the accounting profile's (:attr:`quotagate.accounting.Profile.boundary`):
    whether a message reaching the limit is refused, or only usage already past it.
    """
    if mailbox is None:
        return Decision(Action.DUNNO, "unknown recipient")
    if not mailbox.enabled:
        return Decision(Action.DUNNO, "mailbox is disabled")
    limits = limits or mailbox.limits
    if limits.unlimited:
        return Decision(Action.DUNNO, "mailbox has no limit")
    if usage is None:
        return Decision(Action.DUNNO, "usage is unknown")

    s = known_size(size)
    used_bytes = usage.bytes + reserved.bytes
    used_msgs = usage.messages + reserved.messages
    byte_grace = grace.of(limits.bytes) if limits.bytes else None
    numbers = Numbers(
        limit_bytes=limits.bytes,
        limit_messages=limits.messages,
        used_bytes=usage.bytes,
        used_messages=usage.messages,
        reserved_bytes=reserved.bytes,
        reserved_messages=reserved.messages,
        size=s,
        grace_bytes=byte_grace,
        measured_at=usage.measured_at,
        source=usage.source,
    )
    if byte_grace is not None:
        if _full(used_bytes, limits.bytes, boundary) and (
            s is None or not _fits(used_bytes, s, limits.bytes, byte_grace, boundary)
        ):
            return Decision(Action.REJECT, "mailbox is at or over its size limit", numbers, Refusal.FULL)
        if s is not None and not _fits(used_bytes, s, limits.bytes, byte_grace, boundary):
            return Decision(Action.REJECT, "message does not fit in the mailbox", numbers, Refusal.DOES_NOT_FIT)
    if limits.messages:
        g = int(grace.fraction * limits.messages)
        if s is None and _full(used_msgs, limits.messages, boundary):
            return Decision(Action.REJECT, "mailbox is at or over its message limit", numbers, Refusal.MESSAGES)
        if s is not None and not _fits(used_msgs, 1, limits.messages, g, boundary):
            return Decision(Action.REJECT, "mailbox has no room for another message", numbers, Refusal.MESSAGES)
    return Decision(Action.ACCEPT, "message fits" if s is not None else "mailbox is under its limit", numbers)


U = TypeVar("U")


class Held(NamedTuple):
    """Room held against one check: the mailbox's, and the part of it held for the folder with
    limits of its own the recipient names (mail for the mailbox's other folders never lands there)."""

    mailbox: Reserved = NOTHING_RESERVED
    folder: Reserved = NOTHING_RESERVED


def judged_with(judge: Callable[[Held], tuple[Decision, U]], held: Held) -> tuple[Decision, U]:
    """``judge(held)``, except that a refusal only ``held`` room causes is a deferral.

    Room held for other messages may yet be let go (a transaction that ends without data, a
    delivery that fails): a 5xx would bounce mail the mailbox may take, and let one client that
    holds room deny the mailbox to every other. What the usage alone refuses stays refused.
    """
    decision, used = judge(held)
    if decision.action is Action.REJECT and any(r.bytes or r.messages for r in held):
        alone, _ = judge(Held())
        if alone.action is Action.ACCEPT:
            return Decision(Action.DEFER, "room is held for messages in progress", decision.numbers), used
    return decision, used


def is_over(
    limits: Limits,
    bytes_: int,
    messages: int,
    threshold: Decimal = Decimal(1),
    boundary: Boundary = Boundary.INCLUSIVE,
) -> bool:
    """Exclusive check for the published over-quota set: at or over ``threshold`` of a limit,
    or (under :attr:`Boundary.EXCLUSIVE`) past it."""
    if boundary is Boundary.EXCLUSIVE:
        return bool(
            (limits.bytes and bytes_ > limits.bytes * threshold)
            or (limits.messages and messages > limits.messages * threshold)
        )
    if limits.bytes and bytes_ >= limits.bytes * threshold:
        return True
    return bool(limits.messages and messages >= limits.messages * threshold)


class Ceiling(Struct, frozen=True):
    """The most a mailbox may hold (usage plus reservations) for :func:`decide` to accept a
    message of a given size, per limit; None where no limit applies.

    It lets a server that cannot run :func:`decide` (a Redis script holding room atomically for
    several hosts) apply the same rules: ``decide`` accepts exactly when the mailbox is within its
    ceiling (``tests/unit/test_decide.py`` checks this against ``decide`` itself).
    """

    bytes: int | None
    messages: int | None

    def admits(self, used_bytes: int, used_messages: int) -> bool:
        return (self.bytes is None or used_bytes <= self.bytes) and (
            self.messages is None or used_messages <= self.messages
        )


def ceiling(
    limits: Limits, size: int | None, grace: Allowance = NO_GRACE, boundary: Boundary = Boundary.INCLUSIVE
) -> Ceiling:
    """The :class:`Ceiling` of ``limits`` for a message of ``size`` (unknown: the classic check)."""
    s = known_size(size)

    def most(limit: int, incoming: int | None, extra: int) -> int:
        if boundary is Boundary.EXCLUSIVE:
            return limit if incoming is None else limit + extra
        if incoming is None:
            return limit - 1
        # _fits: used + incoming <= limit, or used < limit and used + incoming <= limit + grace.
        return max(limit - incoming, min(limit - 1, limit + extra - incoming))

    return Ceiling(
        most(limits.bytes, s, grace.of(limits.bytes)) if limits.bytes else None,
        most(limits.messages, None if s is None else 1, int(grace.fraction * limits.messages))
        if limits.messages
        else None,
    )
