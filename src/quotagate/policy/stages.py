"""Checks at DATA as well as at RCPT: the message's real size, and one answer for a message.

A client that declares no ``SIZE=`` passes every RCPT-time check of a mailbox under its limit.
Once the message is in, its size is known, and the same decision rules run again (stage
``data``): per recipient where the MTA can refuse per recipient (Exim with PRDR), otherwise for
the whole message, which is refused only when *every* recipient is refused: refusing it for one
full mailbox would refuse it for the others too.

Pure: no I/O, no clock of its own. The caller passes ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Literal, NamedTuple

from quotagate.accounting import Profile, SizeRule
from quotagate.model import Action
from quotagate.policy.reservations import Transaction

Stage = Literal["rcpt", "data"]
# How long the recipients of an open transaction are kept: longer than any MTA lets a
# transaction last (each SMTP command times out within minutes), whatever reservation_seconds is.
RECIPIENTS_SECONDS = 3600.0
STAGES: tuple[Stage, ...] = ("rcpt", "data")


def label(stage: Stage) -> str:
    """How logs and ``check`` name a stage: the SMTP command it answers."""
    return "RCPT" if stage == "rcpt" else "DATA"


def exim_data_size(profile: Profile, size: int, added: int, lines: int) -> int:
    """The size a message Exim received will have in the mailbox, as ``profile`` counts it.

    Exim's ``$message_size`` at DATA counts line ends as LF (as the message sits in its spool
    and in a Maildir file) and leaves out the Received header Exim adds (``added``: the
    generated ACL sends the size of every header it will write that the message did not bring).
    A profile that counts CRLF line ends (Dovecot's virtual sizes, ``W=``) sees one more byte
    per line (``lines``: ``$message_linecount``).
    """
    total = size + max(0, added)
    if profile.size is SizeRule.VIRTUAL:
        total += max(0, lines)
    return total


def message_verdict(decisions: Iterable[Action], recipient_count: int, let_in: int) -> Action:
    """One answer for a message from the decisions for its recipients (RFC 5321 has one reply
    to the end of data): refused only when every recipient is refused, permanently (REJECT)
    when each refusal is permanent, else temporarily (DEFER). A recipient nobody checked (fewer
    RCPTs ``let_in`` by the checks than the MTA's ``recipient_count``: it accepted one without
    asking) is not refused; nothing known is DUNNO. The count is of RCPT commands, not of
    addresses: a client giving one recipient twice is counted twice by both."""
    actions = list(decisions)
    if not actions or let_in < recipient_count:
        return Action.DUNNO
    if all(a is Action.REJECT for a in actions):
        return Action.REJECT
    if all(a in (Action.REJECT, Action.DEFER) for a in actions):
        return Action.DEFER
    return Action.DUNNO


class LetIn(NamedTuple):
    """The recipients a transaction was let in for at RCPT, and how many RCPTs that took."""

    recipients: tuple[str, ...]
    rcpts: int


SLOT = 320
"""Characters a recipient is remembered in per place among ``most``: RFC 5321's 64 of local part,
"@", 255 of domain. A longer one (Postfix and Exim take local parts past 64) takes more places."""


def places(recipient: str) -> int:
    return max(1, -(-len(recipient) // SLOT))


class Recipients:
    """The recipients each open transaction was let in for at RCPT: Postfix names the recipient
    at END-OF-MESSAGE only when there is one, so the daemon remembers the rest.

    Bounded, as everything a remote client can grow: at most ``per_transaction`` recipients a
    transaction (Postfix's smtpd_recipient_limit defaults to 1000; past it nothing more is
    remembered, and the message is then never refused as a whole), at most ``most`` recipients
    in all (``[policy] max_reservations``: a client's transactions without SIZE= hold no room,
    and would otherwise be bounded by nothing; the oldest transactions are forgotten first, and
    a message whose recipients are forgotten is accepted), none kept longer than ``seconds``.
    A recipient longer than :data:`SLOT` takes a place per SLOT characters: a million
    recipients of the 4 kB a request line may carry would be gigabytes.
    """

    def __init__(self, seconds: float, most: int = 100_000, per_transaction: int = 1000) -> None:
        self.seconds = seconds
        self.most = most
        self.per_transaction = per_transaction
        self._seen: OrderedDict[Transaction, tuple[float, dict[str, int]]] = OrderedDict()
        self._total = 0  # places taken by the recipients remembered, of every transaction
        self.overflowed: set[Transaction] = set()

    def add(self, transaction: Transaction, recipient: str, now: float) -> None:
        """One RCPT let in for ``recipient`` (a recipient given twice is counted twice, as the
        MTA's ``recipient_count`` counts it)."""
        entry = self._seen.get(transaction)
        if entry is None:
            self.expire(now)  # the oldest first: O(1) unless some are due
            entry = self._seen[transaction] = (now, {})
        recipients = entry[1]
        if recipient not in recipients:
            taken = places(recipient)
            while self._total + taken > self.most and next(iter(self._seen)) != transaction:
                self._forget_oldest()
            if len(recipients) >= self.per_transaction or self._total + taken > self.most:
                self.overflowed.add(transaction)
                return
            self._total += taken
        recipients[recipient] = recipients.get(recipient, 0) + 1

    def take(self, transaction: Transaction, now: float) -> LetIn | None:
        """The recipients seen for the transaction (forgotten now), in the order first seen; None
        when they are not all known (more than ``per_transaction``, or than ``most`` in all)."""
        self.expire(now)
        recipients = self._pop(transaction)
        if transaction in self.overflowed:
            self.overflowed.discard(transaction)
            return None
        return LetIn(tuple(recipients), sum(recipients.values()))

    def forget(self, transaction: Transaction) -> None:
        self._pop(transaction)
        self.overflowed.discard(transaction)

    def expire(self, now: float) -> None:
        while self._seen:
            since = next(iter(self._seen.values()))[0]
            if now - since < self.seconds:
                return
            self._forget_oldest()

    def _pop(self, transaction: Transaction) -> dict[str, int]:
        entry = self._seen.pop(transaction, None)
        recipients = entry[1] if entry else {}
        self._total -= sum(places(r) for r in recipients)
        return recipients

    def _forget_oldest(self) -> None:
        transaction = next(iter(self._seen))
        self._pop(transaction)
        self.overflowed.discard(transaction)

    @property
    def remembered(self) -> int:
        """Places taken by the recipients remembered, of every transaction (one each, more for
        one longer than :data:`SLOT`)."""
        return self._total

    def __len__(self) -> int:
        return len(self._seen)
