"""Reservations as pure bookkeeping: transactions, the client cap, deliveries and readings."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from quotagate.decide import Reserved, decide
from quotagate.model import Action, Limits, Mailbox, Usage
from quotagate.policy.claim import UNLIMITED, client_caps
from quotagate.policy.reservations import Reservation, Reservations, Transaction, client_key, delivery_most
from quotagate.sizes import Allowance

BIG = 10**12
A, B = Transaction("192.0.2.1", "t1"), Transaction("192.0.2.2", "t2")


def hold(r: Reservations, t: Transaction, size: int, now: float = 0, box: str = "a@x", cap: int = BIG) -> bool:
    return r.hold(t, box, size, now, cap_bytes=cap, cap_messages=BIG)


def test_held_sums_every_transaction() -> None:
    r = Reservations(seconds=60)
    assert hold(r, A, 100) and hold(r, B, 50) and hold(r, A, 7, box="b@x")
    assert r.held("a@x", now=1, measured_at=0) == Reserved(150, 2)
    assert r.held("c@x", now=1, measured_at=0) == Reserved()
    assert r.totals() == {"held": 157, "flight": 0}


def test_the_same_transaction_asking_again_replaces_its_reservation() -> None:
    r = Reservations(seconds=60)
    hold(r, A, 100)
    hold(r, A, 30)  # the alias and the address itself: one delivery
    assert r.held("a@x", 1, 0) == Reserved(30, 1)
    assert r.released["replaced"] == 1


def test_a_transaction_without_data_releases_at_once() -> None:
    r = Reservations(seconds=600)
    hold(r, A, 100)
    hold(r, B, 50)
    assert r.end(A, with_data=False, now=5) == 1
    assert r.held("a@x", 5, 0) == Reserved(50, 1)
    assert r.released["no data"] == 1


def test_mail_in_flight_stays_until_its_delivery_is_seen_and_measured() -> None:
    r = Reservations(seconds=600)
    hold(r, A, 100, now=0)
    r.end(A, with_data=True, now=1)
    assert r.totals() == {"held": 0, "flight": 100}
    assert r.held("a@x", now=50, measured_at=40) == Reserved(100, 1)  # a reading alone frees nothing
    assert r.end(A, with_data=False, now=51) == 0  # a later QUIT does not free mail in flight
    assert r.delivered("a@x", now=60)
    assert r.held("a@x", now=61, measured_at=59) == Reserved(100, 1)  # reading older than the delivery
    assert r.held("a@x", now=62, measured_at=61) == Reserved()
    assert r.released["delivered"] == 1


def test_a_delivery_releases_the_smallest_mail_in_flight() -> None:
    r = Reservations(seconds=600)
    for i, t in enumerate((B, A)):
        hold(r, t, 200 - 100 * i, now=i)  # B: 200, then A: 100
        r.end(t, with_data=True, now=i)
    r.delivered("a@x", now=10)  # whichever landed, at least 100 bytes did
    assert r.held("a@x", now=11, measured_at=11) == Reserved(200, 1)
    assert not r.delivered("b@x", now=12)


def test_a_delivery_of_known_size_releases_only_mail_it_could_be() -> None:
    """Scenario: a 90,000-byte message is in flight when a 1,000-byte one that never went through
    the daemon lands (cron's mail, a vacation reply), its size in its name (S=).
    Expected: the reading after it still holds the 90,000 bytes; the message's own delivery,
    a little larger with the headers its delivery agent adds, releases them."""
    r = Reservations(seconds=600)
    hold(r, A, 90_000)
    r.end(A, with_data=True, now=1)
    assert not r.delivered("a@x", now=10, size=1_000)
    assert r.held("a@x", now=11, measured_at=11) == Reserved(90_000, 1)
    assert r.delivered("a@x", now=20, size=90_312)
    assert r.held("a@x", now=21, measured_at=21) == Reserved()


def test_a_delivery_of_known_size_matches_the_message_nearest_its_size() -> None:
    """Scenario: 1,000, 50,000 and 100,000 bytes in flight; a delivery of 98,600 bytes is seen
    (Postfix's size counts CRLF line ends, the file LF ones: a little under what was held).
    Expected: the 100,000-byte message's room is released, the two others kept."""
    r = Reservations(seconds=600)
    for n, size in enumerate((1_000, 50_000, 100_000)):
        t = Transaction("192.0.2.1", f"t{n}")
        hold(r, t, size, now=n)
        r.end(t, with_data=True, now=n)
    assert r.delivered("a@x", now=10, size=98_600)
    assert r.held("a@x", now=11, measured_at=11) == Reserved(51_000, 2)


def test_a_message_of_short_lines_postfix_counted_with_crlf_is_released_by_its_own_delivery() -> None:
    """Scenario: Postfix accepts a CSV report of 6,000 short rows; its END-OF-MESSAGE size,
    59,528 (CRLF line ends), goes in flight. Dovecot's LDA (or Courier's deliverquota) stores it
    as ``...,S=53888`` (LF line ends, Postfix's delivery headers included); measured with the
    real programs. Expected: that delivery releases the message's room. It released none: a
    delivery was matched only to room at most 5% and 1 KiB over its size, and the room stayed
    held for reservation_seconds. A 20,000-byte message beside it is still kept."""
    r = Reservations(seconds=600)
    for n, size in enumerate((59_528, 20_000)):
        t = Transaction("192.0.2.1", f"postfix-{n}")
        assert hold(r, t, size)
        r.end(t, with_data=True, now=1, size=size)
    assert r.delivered("a@x", now=10, size=53_888)
    assert r.held("a@x", now=11, measured_at=11) == Reserved(20_000, 1)


def test_expiry_and_the_global_cap() -> None:
    r = Reservations(seconds=60, max_reservations=2)
    for i in range(3):
        hold(r, Transaction("c", str(i)), 10, now=i)
    assert len(r) == 2 and r.released["evicted"] == 1
    assert r.held("a@x", now=61.5, measured_at=0) == Reserved(10, 1)  # the first left went at 61
    assert r.held("a@x", now=62, measured_at=0) == Reserved()


def test_the_global_cap_lets_the_reservation_made_first_go_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """Scenario: max_reservations = 2; A's room is held, then B's; a reload shortens
    reservation_seconds from 600 to 60; C's check is accepted, and the cap is passed.
    Expected: A's reservation goes (made first), C's just made stays, and the log says so (an
    admin learns the cap is too low). Taken by earliest expiry, C's own went: its accepted
    message held no room at all."""
    r = Reservations(seconds=600, max_reservations=2)
    c = Transaction("192.0.2.3", "t3")
    assert hold(r, A, 10, now=0) and hold(r, B, 10, now=1)
    r.seconds = 60
    assert hold(r, c, 10, now=2)
    assert {res.transaction for res in r} == {B, c}
    assert r.released["evicted"] == 1
    assert "more than max_reservations (2) reservations: the oldest let go" in caplog.text


def test_the_global_cap_lets_room_held_before_data_go_before_mail_in_flight() -> None:
    """Scenario: max_reservations = 2; an honest message to a@x was accepted (in flight, made
    first); then a client holds room before DATA, and another, passing the cap (one client
    could make them by the hundred: one byte for each of roomy+1@ ... roomy+100@).
    Expected: the oldest room held before DATA goes, and the accepted message keeps its room
    on its way: holds must not make the daemon forget mail that others' checks must count."""
    r = Reservations(seconds=600, max_reservations=2)
    honest, c = Transaction("198.51.100.1", "h"), Transaction("203.0.113.66", "x2")
    assert hold(r, honest, 5000, now=0)
    r.end(honest, with_data=True, now=1)
    assert hold(r, A, 1, now=2) and hold(r, c, 1, now=3)
    assert {res.transaction for res in r} == {honest, c}
    assert r.held("a@x", now=4, measured_at=0) == Reserved(5001, 2)


def test_a_hold_just_accepted_is_not_evicted_by_the_cap_it_passes() -> None:
    """Scenario: max_reservations = 2; two honest messages to a@x were accepted and are in flight.
    A third client's check is accepted: hold() returns True (the caller answers DUNNO, holding
    the message's room), and the cap is passed. _evict_oldest lets room held before DATA go
    first, and the only room held is the hold just made: it evicts it at once.
    Expected: the check just accepted keeps its room (the oldest in flight goes instead): it
    returned True while nothing was held, and the next check did not see the 1,000 bytes."""
    r = Reservations(seconds=600, max_reservations=2)
    for n in range(2):
        t = Transaction(f"198.51.100.{n + 1}", f"h{n}")
        assert r.hold(t, "a@x", 5000, now=n, cap_bytes=BIG, cap_messages=BIG)
        r.end(t, with_data=True, now=n)
    c = Transaction("192.0.2.3", "c")
    accepted = r.hold(c, "a@x", 1000, now=3, cap_bytes=BIG, cap_messages=BIG)
    held = r.held("a@x", now=4, measured_at=0)
    assert not accepted or r.mine(c, "a@x") is not None, (
        f"hold() said True, but the check's 1,000 bytes are not held (held for a@x: {held})"
    )


def test_copies_set_aside_are_bounded_in_all_not_by_transaction() -> None:
    """Scenario: max_reservations = 3; one transaction's message without PRDR is refused at DATA
    for 1,000 copies (roomy+1@ ... roomy+1000@, a client names as many as its MTA lets it),
    each set aside, then another transaction's copy; then the first message is accepted.
    Expected: at most 3 copies are kept aside in all, the newest transaction's among them
    (bounded by transactions only, one transaction's copies grew without bound)."""
    r = Reservations(seconds=600, max_reservations=3)
    for n in range(1000):
        r.set_aside(A, "a@x", 10, now=0, copy=f"a+{n}")
    r.set_aside(B, "a@x", 10, now=1, copy="b")
    assert r._aside_copies <= 3 and sum(len(copies) for _, copies in r._aside.values()) == r._aside_copies
    assert r.end(B, with_data=True, now=2) == 1
    assert r.held("a@x", now=2, measured_at=0) == Reserved(10, 1)


def test_restored_room_is_held_no_longer_than_room_held_now() -> None:
    """Scenario: the state file was written while the host's clock ran a day ahead (it booted
    before NTP stepped it back): its reservation was made, and expires, a day from now.
    Expected: restored, it expires reservation_seconds from now at the latest, and its age is
    not negative. Taken as written, the mailbox's room stayed held for a day."""
    r = Reservations(seconds=600)
    ahead = 86_400.0
    saved = Reservation(A, "a@x", 9000, made_at=ahead, expires_at=ahead + 600)
    assert r.restore([saved], now=0) == 1
    assert r.held("a@x", now=599, measured_at=0) == Reserved(9000, 1)
    assert r.held("a@x", now=601, measured_at=0) == Reserved()
    assert saved.made_at == 0


def test_one_client_is_capped_in_one_mailbox_but_never_below_one_message() -> None:
    r = Reservations(seconds=600)
    prober = [Transaction("203.0.113.9", str(i)) for i in range(5)]
    assert hold(r, prober[0], 800, cap=1000)
    assert not hold(r, prober[1], 300, cap=1000)  # 1100 > 1000: decided, but nothing held
    assert hold(r, prober[2], 200, cap=1000)
    assert not hold(r, prober[3], 1, cap=1000)
    assert r.capped == 2
    assert hold(r, A, 5000, cap=1000)  # another client; and one message of any declared size
    assert hold(r, prober[4], 700, box="b@x", cap=1000)  # another mailbox
    assert r.held("a@x", 1, 0) == Reserved(800 + 200 + 5000, 3)  # held room counts in full
    r.end(prober[0], with_data=False, now=1)
    assert hold(r, prober[3], 800, cap=1000)
    r.end(prober[3], with_data=True, now=2)  # sent: in flight, no longer the client's to count
    assert hold(r, prober[1], 800, cap=1000)


def test_a_flood_of_transactions_that_end_at_once_does_not_grow_memory() -> None:
    r = Reservations(seconds=600)
    for i in range(20_000):  # RCPT, then RSET or the next MAIL: held, then let go at once
        t = Transaction("203.0.113.9", str(i))
        hold(r, t, 10, now=i / 1000)
        r.end(t, with_data=False, now=i / 1000)
    for i in range(5_000):  # mail in flight whose delivery is never seen, expiring
        t = Transaction("198.51.100.1", f"f{i}")
        hold(r, t, 10 + i % 7, now=100 + i)
        r.end(t, with_data=True, now=100 + i)
        r.expire(now=100 + i)
    assert len(r) <= 600
    assert len(r._expiry) <= 2 * len(r) + 1024
    assert len(r._made) <= 2 * len(r) + 1024
    assert len(r._made_held) <= 2 * len(r) + 1024
    assert all(len(heap) <= 2 * len(r) + 16 for heap in r._undelivered.values())


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    # An IPv6 client is its /48, the usual end-site allocation: one site has 65,536 /64s.
    assert client_key("2001:db8:1:2:3::4") == client_key("2001:db8:1:ffff::1") == "2001:db8:1::/48"
    assert client_key("IPv6:2001:db8::1") == "2001:db8::/48"
    assert client_key("") == "local"
    # A dual-stack listener reports IPv4 clients in IPv6 form: each is still a client of its own.
    assert client_key("::ffff:203.0.113.66") == "203.0.113.66" != client_key("::ffff:198.51.100.7")


# ---- any interleaving -----------------------------------------------------------------------

LIMIT = 10_000


@dataclass
class Message:
    transaction: Transaction
    size: int
    state: str = "held"  # held, flight, delivered
    copy: str = ""  # another detail of the mailbox in the same transaction: a copy of its own


@dataclass
class Model:
    delivered_bytes: int = 0  # what the mailbox really holds
    measured: Usage = field(default_factory=lambda: Usage(0, 0, 0.0))
    accepted: list[Message] = field(default_factory=list)


class Interleavings(RuleBasedStateMachine):
    """Checks, transaction ends, deliveries, readings and restarts in any order: accepted mail
    never overfills the mailbox (without a client cap), no client's held room shows more than its
    cap to the others, and nothing still in flight is ever released."""

    CAP = BIG

    def __init__(self) -> None:
        super().__init__()
        self.r = Reservations(seconds=10**9)
        self.m = Model()
        self.now = 1.0
        self.n = 0

    def tick(self) -> float:
        self.now += 1
        return self.now

    @rule(size=st.integers(1, 4000), client=st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]))
    def check(self, size: int, client: str) -> None:
        now = self.tick()
        self.n += 1
        t = Transaction(client_key(client), str(self.n))
        reserved = self.r.held("a@x", now, self.m.measured.measured_at)
        decision = decide(Mailbox("a@x", Limits(LIMIT)), self.m.measured, size, reserved)
        if decision.action is Action.ACCEPT and self.r.hold(t, "a@x", size, now, self.CAP, BIG):
            self.m.accepted.append(Message(t, size))

    @precondition(lambda self: any(m.state == "held" for m in self.m.accepted))
    @rule(pick=st.integers(0, 10**6), copy=st.sampled_from(["a", "b", "c"]))
    def another_copy(self, pick: int, copy: str) -> None:
        """The same transaction names the mailbox again under a detail (a copy of its own, or
        the same one asked again: weighed in place of its hold)."""
        now = self.tick()
        held = [m for m in self.m.accepted if m.state == "held"]
        t, size = held[pick % len(held)].transaction, held[pick % len(held)].size
        mine = self.r.mine(t, "a@x", copy)
        everything = self.r.held("a@x", now, self.m.measured.measured_at)
        reserved = everything if mine is None else Reserved(everything.bytes - mine.bytes, everything.messages - 1)
        decision = decide(Mailbox("a@x", Limits(LIMIT)), self.m.measured, size, reserved)
        if decision.action is Action.ACCEPT and self.r.hold(t, "a@x", size, now, self.CAP, BIG, copy):
            self.m.accepted = [m for m in self.m.accepted if (m.transaction, m.copy) != (t, copy)]
            self.m.accepted.append(Message(t, size, copy=copy))

    @precondition(lambda self: any(m.state == "held" for m in self.m.accepted))
    @rule(data=st.booleans(), pick=st.integers(0, 10**6))
    def end(self, data: bool, pick: int) -> None:
        held = [m for m in self.m.accepted if m.state == "held"]
        transaction = held[pick % len(held)].transaction
        self.r.end(transaction, data, self.tick())
        for message in [m for m in held if m.transaction == transaction]:
            if data:
                message.state = "flight"
            else:
                self.m.accepted.remove(message)

    @precondition(lambda self: any(m.state == "flight" for m in self.m.accepted))
    @rule(seen=st.booleans())
    def deliver(self, seen: bool) -> None:
        # Mail lands in the order it was accepted; the daemon may or may not be told.
        message = next(m for m in self.m.accepted if m.state == "flight")
        message.state = "delivered"
        self.m.delivered_bytes += message.size
        if seen:
            self.seen(message)

    def seen(self, message: Message) -> None:
        """The daemon is told of the delivery (of unknown size: a name without S=)."""
        self.r.delivered("a@x", self.tick())

    @rule()
    def measure(self) -> None:
        self.m.measured = Usage(self.m.delivered_bytes, 0, self.tick())

    @rule()
    def restart(self) -> None:
        saved = list(self.r)
        self.r = Reservations(seconds=10**9)
        self.r.restore(saved, self.tick())

    @invariant()
    def accepted_mail_fits(self) -> None:
        pending = sum(m.size for m in self.m.accepted if m.state in ("held", "flight"))
        assert self.m.delivered_bytes + pending <= LIMIT

    @invariant()
    def a_client_holds_at_most_its_cap_or_one_message(self) -> None:
        held: dict[str, list[int]] = {}
        for r in self.r:
            if r.state == "held":
                held.setdefault(r.transaction.client, []).append(r.bytes)
        assert all(sum(sizes) <= self.CAP or len(sizes) == 1 for sizes in held.values())

    @invariant()
    def nothing_in_flight_is_released(self) -> None:
        # Held room is the transaction's own; room in flight is matched to deliveries by mailbox
        # only (which message landed is not known): what is kept must cover what is on its way.
        held = {(r.transaction, r.copy) for r in self.r if r.state == "held"}
        assert all((m.transaction, m.copy) in held for m in self.m.accepted if m.state == "held")
        kept = sum(r.bytes for r in self.r if r.state == "flight")
        assert kept >= sum(m.size for m in self.m.accepted if m.state == "flight")


class CappedInterleavings(Interleavings):
    CAP = 3_000


class SizedInterleavings(Interleavings):
    """Deliveries seen with their size (S= in the name, Exim's hint), and mail that never went
    through the daemon landing too (cron's, a vacation reply): such a delivery may release a
    message it could be, at most twice its size and 1 KiB (see delivery_most)."""

    def __init__(self) -> None:
        super().__init__()
        self.leeway = 0  # what deliveries seen may have released of mail still in flight
        self.outside = 0  # mail that landed without the daemon's check

    def seen(self, message: Message) -> None:
        self.r.delivered("a@x", self.tick(), message.size)
        self.leeway += delivery_most(message.size) - message.size

    @rule(size=st.one_of(st.integers(0, 600), st.integers(0, 4000)), seen=st.booleans())
    def unrelated(self, size: int, seen: bool) -> None:
        self.m.delivered_bytes += size
        self.outside += size
        if seen:
            self.r.delivered("a@x", self.tick(), size)
            self.leeway += delivery_most(size)

    @invariant()
    def accepted_mail_fits(self) -> None:
        pending = sum(m.size for m in self.m.accepted if m.state in ("held", "flight"))
        assert self.m.delivered_bytes + pending <= LIMIT + self.outside + self.leeway

    @invariant()
    def nothing_in_flight_is_released(self) -> None:
        held = {(r.transaction, r.copy) for r in self.r if r.state == "held"}
        assert all((m.transaction, m.copy) in held for m in self.m.accepted if m.state == "held")
        kept = sum(r.bytes for r in self.r if r.state == "flight")
        assert kept + self.leeway >= sum(m.size for m in self.m.accepted if m.state == "flight")


Interleavings.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
CappedInterleavings.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestInterleavings = Interleavings.TestCase
TestCappedInterleavings = CappedInterleavings.TestCase
SizedInterleavings.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestSizedInterleavings = SizedInterleavings.TestCase


def test_a_folders_own_share_counts_the_room_a_client_holds_in_that_folder_only() -> None:
    """The mailbox's share weighs everything the client holds in it; a folder's own share
    (``roomy+Archive``) what it holds for that folder, under whatever spelling of the address
    (``Roomy+Archive`` is another copy, delivered apart, but the same folder's room)."""
    tenth = Allowance(fraction=Decimal("0.1"))
    assert client_caps(tenth, Limits(1_000_000)) == (100_000, UNLIMITED)
    assert client_caps(tenth, Limits(10_000, 50)) == (1_000, 5)
    r = Reservations(seconds=600)
    caps = client_caps(tenth, Limits(10_000))
    assert hold(r, A, 5_000, cap=100_000)  # the mailbox itself
    assert r.hold(A, "a@x", 500, 0, 100_000, BIG, "a+Archive", "Archive", caps)
    assert r.hold(A, "a@x", 600, 0, 100_000, BIG, "a+Archive.x", "Archive.x", caps)  # another folder
    assert r.hold(B, "a@x", 600, 0, 100_000, BIG, "a+Archive", "Archive", caps)  # another client
    assert not r.hold(Transaction(A.client, "t3"), "a@x", 600, 0, 100_000, BIG, "A+Archive", "Archive", caps)
    assert r.held_in("a@x", "Archive") == Reserved(1_100, 2)  # the mailbox's own 5,000 land elsewhere
    assert r.held("a@x", 0, 0) == Reserved(6_700, 4)
