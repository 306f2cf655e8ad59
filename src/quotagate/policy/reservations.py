"""Room held for mail the daemon accepted and that has not landed yet. Pure bookkeeping: the
caller passes the clock (wall-clock seconds, so that reservations survive a restart).

Dovecot's quota-status lets N parallel messages through when each fits alone; holding the
declared size of every accepted message makes the N-th check see the first N-1. A reservation
belongs to one SMTP transaction and one mailbox (the same transaction asking again for the same
mailbox replaces its reservation: an alias and the address itself are delivered once):

- **held** from the accepted RCPT until the transaction ends: without data it is released at
  once; with data (the message was accepted) it goes **in flight**;
- **in flight** until its delivery is seen (a watch event, Exim's delivery hint) *and* a usage
  reading taken after that includes it, or until it expires. A reading never releases a
  reservation whose delivery was not seen: the message may still be on its way.

Probing is bounded: one client (an IPv4 address or an IPv6 /48) holds before DATA at most
``cap`` (``client_hold``) in one mailbox, or one message of the size it declared when that is
more; a check beyond that holds nothing (the caller defers it: see PolicyService). So one client
reduces the room others see by at most that, and by nothing once its transactions end. Held room
counts in full against every check: showing others less of it would let a burst of large
messages from many clients overfill the mailbox. Room in flight is no client's to count: most
sites see no delivery (no watcher, no delivery hint), and it would cap an honest sender at
``client_hold`` per ``reservation_seconds``. (So a message Postfix's milters refuse after its
END-OF-MESSAGE check keeps its room in flight until it expires: see the README.) Every check is
O(1): per-mailbox and per-client sums are kept up to date, expiry pops a heap, and a global cap
evicts the oldest reservations first.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import ipaddress
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from quotagate.decide import Reserved
from quotagate.policy.throttle import Throttled

log = logging.getLogger(__name__)

State = Literal["held", "flight"]
Release = Literal["no data", "delivered", "expired", "evicted", "released", "replaced", "handed over"]


@functools.lru_cache(maxsize=4096)  # asked on every request, and clients come back: parsing is most of it
def client_key(address: str) -> str:
    """The unit a cap applies to: an IPv4 address, an IPv6 /48, or the text as sent. A /48, not a
    /64: a site is usually given a /48 (or a /56), and as 65,536 clients it would hold 65,536 caps.
    An IPv4 address in IPv6 form (``::ffff:192.0.2.1``, from a dual-stack listener) is that IPv4
    address: as one /48, every IPv4 client would share one cap."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return address.strip() or "local"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/48", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Transaction:
    """One SMTP transaction: Postfix's ``instance`` or the id Exim's ACLs keep, with the client."""

    client: str
    id: str


@dataclass(eq=False)
class Reservation:
    transaction: Transaction
    mailbox: str
    bytes: int
    made_at: float
    expires_at: float
    state: State = "held"
    delivered_at: float | None = None
    # Which copy of the message: the local part as sent when it is not the mailbox's own (roomy+a,
    # roomy+b, Roomy: each delivered and held apart); "" for the mailbox's own spelling.
    copy: str = ""
    # The folder with limits of its own the copy is delivered to ("" for none): its room, and
    # each client's share of it, are weighed by folder, whatever the spelling of the address.
    folder: str = ""
    live: bool = field(default=True, repr=False)  # False once released (heap entries go stale)

    @property
    def key(self) -> tuple[Transaction, str, str]:
        return self.transaction, self.mailbox, self.copy


@dataclass
class _Sums:
    bytes: int = 0
    messages: int = 0

    def add(self, bytes_: int, messages: int) -> None:
        self.bytes += bytes_
        self.messages += messages


K = TypeVar("K")


def _count(sums: dict[K, _Sums], key: K, bytes_: int, messages: int) -> None:
    """Add to the sums at ``key``; sums that reach no message go."""
    of_key = sums.setdefault(key, _Sums())
    of_key.add(bytes_, messages)
    if of_key.messages == 0:
        del sums[key]


def _take(sums: dict[K, _Sums], key: K, bytes_: int) -> None:
    _count(sums, key, -bytes_, -1)


def delivery_most(size: int) -> int:
    """The most room a message whose delivery of ``size`` bytes was seen may have held: twice and
    1 KiB (Postfix's size counts CRLF line ends, the file LF ones: for a report of short lines
    a tenth more, for empty lines twice; a transport's headers are counted in neither). So a
    delivery of mail the daemon never let in releases at most its size and 1 KiB beyond it."""
    return 2 * size + 1024


def _reserved(sums: _Sums | None) -> Reserved:
    return Reserved(sums.bytes, sums.messages) if sums else Reserved()


class Reservations:
    def __init__(self, seconds: float, max_reservations: int = 1_000_000) -> None:
        self.seconds = seconds
        self.max_reservations = max_reservations
        self._by_key: dict[tuple[Transaction, str, str], Reservation] = {}
        # Each transaction's reservations, by mailbox, then by copy.
        self._by_transaction: dict[Transaction, dict[str, dict[str, Reservation]]] = {}
        self._mailbox: dict[str, _Sums] = {}
        self._client: dict[tuple[str, str], _Sums] = {}  # room each client holds before DATA
        self._held_mailbox: dict[str, _Sums] = {}  # room held before DATA, by mailbox (the rest is in flight)
        self._held_folder: dict[tuple[str, str], _Sums] = {}  # and by folder with limits of its own
        self._folder: dict[tuple[str, str], _Sums] = {}  # room held (and in flight) for a folder with limits
        # Room each client holds before DATA in such a folder, against the folder's own share.
        self._client_folder: dict[tuple[str, str, str], _Sums] = {}
        self._delivered: dict[str, deque[Reservation]] = {}  # in delivery order, per mailbox
        # In flight and not matched to a delivery yet, by size (then age), per mailbox; and the
        # place of each in that order (see delivered).
        self._undelivered: dict[str, list[tuple[int, int, Reservation]]] = {}
        self._awaiting: dict[Reservation, tuple[int, int]] = {}
        self._expiry: list[tuple[float, int, Reservation]] = []
        # In the order they were made, for the global cap: room held before DATA goes first (a
        # client's own transactions, which it could make by the thousand), then room in flight
        # (accepted mail, on its way), the oldest first in each.
        self._made: deque[Reservation] = deque()
        self._made_held: deque[Reservation] = deque()
        self._evicted_log = Throttled(log)
        # Copies refused at DATA without PRDR, by transaction (when it last set one aside, and
        # its copies: their size and folder): the message has one answer there, and accepted for
        # its other recipients it reaches these too. Counted nowhere until then, in flight once
        # the message is accepted (see end), forgotten when it is not.
        self._aside: dict[Transaction, tuple[float, dict[tuple[str, str], tuple[int, str]]]] = {}
        self._aside_copies = 0  # in all: at most max_reservations (a client names the copies)
        self._order = itertools.count()
        self.released: dict[str, int] = dict.fromkeys(
            ("no data", "delivered", "expired", "evicted", "released", "replaced", "handed over"), 0
        )
        self.capped = 0  # checks decided without holding more: the client was at its cap
        self.version = 0  # moves on every change: the daemon saves the reservations when it moved

    # -- what is held ------------------------------------------------------------------------------
    def held(self, mailbox: str, now: float, measured_at: float) -> Reserved:
        """What is held for ``mailbox``: expired reservations go, and those in flight whose
        delivery was seen before ``measured_at`` (the usage at hand includes them)."""
        self.expire(now)
        delivered = self._delivered.get(mailbox)
        while delivered and (delivered[0].delivered_at or 0) < measured_at:
            r = delivered.popleft()
            if r.live:
                self._drop(r, "delivered")
        return _reserved(self._mailbox.get(mailbox))

    def held_in(self, mailbox: str, folder: str) -> Reserved:
        """What is held (and in flight) for ``folder`` of ``mailbox``, a folder with limits of its
        own: mail for the mailbox's other folders never lands there. Ask :meth:`held` first (it
        lets expired and delivered reservations go)."""
        return _reserved(self._folder.get((mailbox, folder)))

    def landing(self, transaction: Transaction, mailbox: str, copy: str, folder: str = "") -> tuple[Reserved, Reserved]:
        """What lands in ``mailbox``, and in its ``folder`` with limits of its own, before a copy
        of the transaction's message (``copy``) could: mail in flight, and the message's other
        copies (held, or set aside); not what other transactions hold before DATA (their mail
        may never come). Ask :meth:`held` first."""
        copies = self._by_transaction.get(transaction, {}).get(mailbox, {})
        own = [(r.bytes, r.folder) for c, r in copies.items() if c != copy and r.state == "held"]
        _, aside = self._aside.get(transaction, (0.0, {}))
        own += [kept for (box, c), kept in aside.items() if box == mailbox and c != copy]

        def lands(total: _Sums | None, held: _Sums | None, mine: list[int]) -> Reserved:
            total_, held_ = _reserved(total), _reserved(held)
            return Reserved(total_.bytes - held_.bytes + sum(mine), total_.messages - held_.messages + len(mine))

        in_mailbox = lands(self._mailbox.get(mailbox), self._held_mailbox.get(mailbox), [b for b, _ in own])
        if not folder:
            return in_mailbox, Reserved()
        key = (mailbox, folder)
        return in_mailbox, lands(self._folder.get(key), self._held_folder.get(key), [b for b, f in own if f == folder])

    def mine(self, transaction: Transaction, mailbox: str, copy: str = "") -> Reservation | None:
        """What the transaction itself holds (before DATA) for this copy in ``mailbox``: a check
        asking again for it replaces it (at DATA with the real size), so it must not count
        against that check. Other copies (``user+a`` and ``user+b`` are two) count."""
        r = self._by_key.get((transaction, mailbox, copy))
        return r if r is not None and r.state == "held" else None

    def holds(self, transaction: Transaction) -> bool:
        """Whether the transaction holds room (before DATA) here."""
        copies = self._by_transaction.get(transaction, {})
        return any(r.state == "held" for of_mailbox in copies.values() for r in of_mailbox.values())

    def let_go(self, transaction: Transaction, mailbox: str, copy: str | None = None) -> bool:
        """Release what the transaction holds (before DATA) for ``mailbox``, for one copy or
        (None) all: refused at DATA, that recipient (or, without PRDR, every one) gets no copy."""
        copies = self._by_transaction.get(transaction, {}).get(mailbox, {})
        chosen = [r for c, r in copies.items() if copy in (None, c) and r.state == "held"]
        for r in chosen:
            self._drop(r, "no data")
        return bool(chosen)

    def set_aside(
        self, transaction: Transaction, mailbox: str, size: int, now: float, copy: str = "", folder: str = ""
    ) -> None:
        """A copy refused at DATA when the message has one answer for all its recipients (no
        PRDR): nothing held for it now, but ``size`` in flight for it if the message is accepted
        for the others (its delivery agent's own quota then decides)."""
        _, copies = self._aside.pop(transaction, (now, {}))  # kept in the order last touched
        self._aside_copies += (mailbox, copy) not in copies
        copies[mailbox, copy] = (size, folder)
        self._aside[transaction] = (now, copies)
        while self._aside_copies > self.max_reservations:  # the oldest transactions' go first
            self._forget_aside(next(iter(self._aside)))

    def _forget_aside(self, transaction: Transaction) -> dict[tuple[str, str], tuple[int, str]]:
        """The copies the transaction set aside, no longer kept."""
        _, copies = self._aside.pop(transaction, (0.0, {}))
        self._aside_copies -= len(copies)
        return copies

    def hold(
        self,
        transaction: Transaction,
        mailbox: str,
        size: int,
        now: float,
        cap_bytes: int,
        cap_messages: int,
        copy: str = "",
        folder: str = "",
        folder_caps: tuple[int, int] | None = None,
    ) -> bool:
        """Hold ``size`` bytes and one message for this copy in the transaction; False (nothing
        held) when the client would pass its cap in this mailbox, or ``folder_caps`` in ``folder``
        (a folder's own share, whatever spelling of its address each hold came by; what the
        client holds for the mailbox's other folders is not the folder's). The transaction's
        earlier reservation for the same copy is replaced."""
        key = (transaction, mailbox, copy)
        old = self._by_key.get(key)
        mine = old if old is not None and old.state == "held" else None

        def over(sums: _Sums, caps: tuple[int, int]) -> bool:
            bytes_after = sums.bytes - (mine.bytes if mine else 0) + size
            messages_after = sums.messages - (1 if mine else 0) + 1
            return bytes_after > max(caps[0], size) or messages_after > max(caps[1], 1)

        client = transaction.client
        if over(self._client.get((client, mailbox), _Sums()), (cap_bytes, cap_messages)) or (
            folder_caps is not None and over(self._client_folder.get((client, mailbox, folder), _Sums()), folder_caps)
        ):
            self.capped += 1
            return False
        if old is not None:
            self._drop(old, "replaced")
        aside = self._aside.get(transaction)
        if aside is not None and aside[1].pop((mailbox, copy), None) is not None:
            self._aside_copies -= 1  # asked again and let in: held, no longer aside
        while self._by_key and len(self._by_key) >= self.max_reservations:  # room made first: never itself
            self._evict_oldest()
        r = Reservation(transaction, mailbox, size, now, now + self.seconds, copy=copy, folder=folder)
        self._add(r)
        return True

    # -- the life of a transaction -----------------------------------------------------------------
    def end(self, transaction: Transaction, with_data: bool, now: float, size: int | None = None) -> int:
        """The transaction ended: its held reservations go in flight (the message was accepted),
        holding the message's real ``size`` when it is known, or are released (no data); so do
        the copies it set aside (see :meth:`set_aside`). Returns how many changed.

        The real size replaces what was declared for every mailbox the transaction holds room
        in: a check at DATA replaced it already for the recipients it asked about, but not for a
        mailbox reached through an alias, which Exim's router asked about at RCPT and its DATA
        ACL, asking about the addresses the client gave, never names."""
        changed = self._end_aside(transaction, with_data, now)
        mine = self._by_transaction.get(transaction)
        if not mine:
            return changed
        for r in [r for copies in mine.values() for r in copies.values()]:
            if r.state != "held":
                continue
            changed += 1
            self.version += 1
            if with_data:
                self._count_for_client(r, -1)
                if size is not None and size != r.bytes:
                    self._mailbox[r.mailbox].add(size - r.bytes, 0)
                    if r.folder:
                        self._folder[r.mailbox, r.folder].add(size - r.bytes, 0)
                    r.bytes = size
                r.state = "flight"
                self._await_delivery(r)
            else:
                self._drop(r, "no data")
        return changed

    def _end_aside(self, transaction: Transaction, with_data: bool, now: float) -> int:
        """The copies the transaction set aside: in flight when its message was accepted."""
        copies = self._forget_aside(transaction)
        if not with_data:
            return 0
        added = 0
        for (mailbox, copy), (size, folder) in copies.items():
            if (transaction, mailbox, copy) in self._by_key:
                continue
            r = Reservation(transaction, mailbox, size, now, now + self.seconds, "flight", copy=copy, folder=folder)
            self._add(r)
            self._await_delivery(r)
            added += 1
        while len(self._by_key) > self.max_reservations:
            self._evict_oldest()
        return added

    def delivered(self, mailbox: str, now: float, size: int | None = None) -> bool:
        """A delivery to ``mailbox`` was seen: an in-flight reservation not yet matched is marked
        delivered (it is released by the next reading taken after now).

        Which message landed is not known, only that one did, and maybe its ``size`` (S= in its
        name, Exim's hint). Known, the reservation matched is the one nearest that size, and
        none larger than that message could have held (see :func:`delivery_most`): mail that
        never went through the daemon (cron's, a vacation reply) lands too, and a small one
        must not free the room of a large message still on its way. Unknown, the smallest:
        never larger than the message that landed when that message is one the daemon let in.
        """
        waiting = self._undelivered.get(mailbox)
        if not waiting:
            return False
        if size is None:
            r = waiting[0][2]
        else:
            at = bisect.bisect_left(waiting, (size,))  # below it: smaller; from it: as large or larger
            below = waiting[at - 1] if at > 0 else None
            above = waiting[at] if at < len(waiting) and waiting[at][0] <= delivery_most(size) else None
            if above is not None and (below is None or above[0] - size < size - below[0]):
                r = above[2]
            elif below is not None:
                r = below[2]
            else:
                return False
        self._stop_awaiting(r)
        self.version += 1
        r.delivered_at = now
        self._delivered.setdefault(mailbox, deque()).append(r)
        return True

    def _await_delivery(self, r: Reservation) -> None:
        key = self._awaiting[r] = (r.bytes, next(self._order))
        bisect.insort(self._undelivered.setdefault(r.mailbox, []), (*key, r))

    def _stop_awaiting(self, r: Reservation) -> None:
        key = self._awaiting.pop(r, None)
        if key is None:
            return
        waiting = self._undelivered[r.mailbox]
        del waiting[bisect.bisect_left(waiting, key)]
        if not waiting:
            del self._undelivered[r.mailbox]

    def release(self, mailbox: str | None = None) -> int:
        """Let go of everything held for ``mailbox`` (every mailbox when None): the admin's call."""
        chosen = [r for r in self._by_key.values() if mailbox is None or r.mailbox == mailbox]
        for r in chosen:
            self._drop(r, "released")
        return len(chosen)

    def hand_over(self, r: Reservation) -> None:
        """Let go of ``r``: another ledger holds it now (the shared one, written back)."""
        self._drop(r, "handed over")

    def expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, _, r = heapq.heappop(self._expiry)
            if r.live:
                self._drop(r, "expired")
        while self._aside:  # a transaction whose end never came (its client vanished)
            transaction, (at, _) = next(iter(self._aside.items()))
            if at + self.seconds > now:
                break
            self._forget_aside(transaction)

    # -- looking at them -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Reservation]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def totals(self) -> dict[State, int]:
        """Bytes held and in flight, for metrics."""
        out: dict[State, int] = {"held": 0, "flight": 0}
        for r in self._by_key.values():
            out[r.state] += r.bytes
        return out

    def mailboxes(self) -> int:
        return len(self._mailbox)

    def restore(self, saved: Iterable[Reservation], now: float) -> int:
        """Take reservations saved by an earlier run (see :mod:`quotagate.policy.state`), dropping
        the expired ones; returns how many were kept."""
        kept = 0
        for r in saved:
            if r.expires_at <= now or r.key in self._by_key:
                continue
            # Written by a clock set ahead (a host that booted before NTP stepped it back): held
            # no longer than a reservation made now would be.
            r.made_at, r.expires_at = min(r.made_at, now), min(r.expires_at, now + self.seconds)
            r.live = True
            self._add(r)
            if r.state == "flight":
                if r.delivered_at is None:
                    self._await_delivery(r)
                else:
                    self._delivered.setdefault(r.mailbox, deque()).append(r)
            kept += 1
        return kept

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _add(self, r: Reservation) -> None:
        self.version += 1
        self._by_key[r.key] = r
        self._by_transaction.setdefault(r.transaction, {}).setdefault(r.mailbox, {})[r.copy] = r
        self._mailbox.setdefault(r.mailbox, _Sums()).add(r.bytes, 1)
        if r.folder:
            self._folder.setdefault((r.mailbox, r.folder), _Sums()).add(r.bytes, 1)
        if r.state == "held":
            self._count_for_client(r, +1)
        heapq.heappush(self._expiry, (r.expires_at, next(self._order), r))
        self._made.append(r)
        if r.state == "held":
            self._made_held.append(r)

    def _drop(self, r: Reservation, why: Release) -> None:
        if not r.live:
            return
        self.version += 1
        r.live = False
        self.released[why] += 1
        del self._by_key[r.key]
        mine = self._by_transaction[r.transaction]
        copies = mine[r.mailbox]
        del copies[r.copy]
        if not copies:
            del mine[r.mailbox]
        if not mine:
            del self._by_transaction[r.transaction]
        _take(self._mailbox, r.mailbox, r.bytes)
        if r.folder:
            _take(self._folder, (r.mailbox, r.folder), r.bytes)
        if r.state == "held":
            self._count_for_client(r, -1)
        # Entries left behind in the heaps and in the middle of the queue are skipped when reached,
        # and swept out once they outnumber the live ones: a flood of transactions that end at
        # once (RCPT, then RSET or MAIL) must not grow memory until their expiry comes round.
        if len(self._expiry) > 2 * len(self._by_key) + 1024:
            self._expiry = [entry for entry in self._expiry if entry[2].live]
            heapq.heapify(self._expiry)
        for made in (self._made, self._made_held):
            while made and not (made[0].live and (made is self._made or made[0].state == "held")):
                made.popleft()
        if len(self._made) > 2 * len(self._by_key) + 1024:
            self._made = deque(r for r in self._made if r.live)
        if len(self._made_held) > 2 * len(self._by_key) + 1024:
            self._made_held = deque(r for r in self._made_held if r.live and r.state == "held")
        queue = self._delivered.get(r.mailbox)
        if queue is not None:
            while queue and not queue[0].live:
                queue.popleft()
            if not queue:
                del self._delivered[r.mailbox]
        self._stop_awaiting(r)

    def _count_for_client(self, r: Reservation, sign: int) -> None:
        """Add (+1) or take (-1) a held reservation to or from its client's sums."""
        key = (r.transaction.client, r.mailbox)
        _count(self._client, key, sign * r.bytes, sign)
        _count(self._held_mailbox, r.mailbox, sign * r.bytes, sign)
        if r.folder:
            _count(self._client_folder, (*key, r.folder), sign * r.bytes, sign)
            _count(self._held_folder, (r.mailbox, r.folder), sign * r.bytes, sign)

    def _evict_oldest(self) -> None:
        """Let go of the reservation made first (not the first to expire: after a reload that
        shortened reservation_seconds, that is the one just made), held before DATA if any is,
        and say so."""
        for made, held_only in ((self._made_held, True), (self._made, False)):
            while made:
                r = made.popleft()
                if r.live and (r.state == "held" or not held_only):
                    self._drop(r, "evicted")
                    self._evicted_log.warning(
                        "more than max_reservations (%d) reservations: the oldest let go (raise [policy]"
                        " max_reservations)",
                        self.max_reservations,
                    )
                    return
