"""Checks at DATA as pure logic: the size a message will have, one answer for a message, and the
recipients remembered per transaction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quotagate.accounting import PROFILES
from quotagate.model import Action
from quotagate.policy.reservations import Transaction
from quotagate.policy.stages import LetIn, Recipients, exim_data_size, label, message_verdict

A, B = Transaction("192.0.2.1", "a"), Transaction("192.0.2.1", "b")
ACTIONS = st.sampled_from(list(Action))


def test_exim_size_counts_the_headers_exim_adds_and_crlf_only_where_the_profile_does() -> None:
    # 32 bytes received with LF line ends over 5 lines, a 158-byte Received header added.
    for name in ("files", "dovecot", "courier", "exim"):
        assert exim_data_size(PROFILES[name], 32, 158, 5) == 190, name
    assert exim_data_size(PROFILES["dovecot-count"], 32, 158, 5) == 195  # W=: CRLF line ends
    assert exim_data_size(PROFILES["files"], 32, -7, 5) == 32  # nonsense never shrinks the message


def test_stage_labels() -> None:
    assert (label("rcpt"), label("data")) == ("RCPT", "DATA")


def test_a_message_is_refused_only_when_every_recipient_is() -> None:
    R, D, A_, N = Action.REJECT, Action.DEFER, Action.ACCEPT, Action.DUNNO
    assert message_verdict([R, R], 2, 2) is R
    assert message_verdict([R, D], 2, 2) is D  # one may fit later: try again
    assert message_verdict([R, A_], 2, 2) is N  # the roomy one gets it; the full one's agent decides
    assert message_verdict([R, N], 2, 2) is N
    assert message_verdict([R], 2, 1) is N  # a recipient nobody asked about is not refused
    assert message_verdict([R], 2, 2) is R  # one recipient given twice: refused twice
    assert message_verdict([R, R, R], 2, 3) is R  # one more seen than the MTA kept: all refused still
    assert message_verdict([], 0, 0) is N


@given(st.lists(ACTIONS, max_size=6), st.integers(0, 8), st.integers(0, 8))
def test_the_verdict_never_refuses_a_recipient_that_was_not_refused(
    actions: list[Action], count: int, let_in: int
) -> None:
    verdict = message_verdict(actions, count, let_in)
    refused = {Action.REJECT, Action.DEFER}
    if verdict in refused:
        assert actions and all(a in refused for a in actions) and let_in >= count
    else:
        assert verdict is Action.DUNNO
    if verdict is Action.REJECT:
        assert all(a is Action.REJECT for a in actions)


def test_recipients_are_kept_per_transaction_once_each_in_order_with_their_rcpts_counted() -> None:
    r = Recipients(seconds=60)
    for rcpt in ("b@x", "a@x", "b@x"):
        r.add(A, rcpt, now=0)
    r.add(B, "c@x", now=0)
    assert r.take(A, now=1) == LetIn(("b@x", "a@x"), 3)
    assert r.take(A, now=1) == LetIn((), 0)  # taken: forgotten
    r.forget(B)
    assert r.take(B, now=1) == LetIn((), 0) and len(r) == 0


def test_too_many_recipients_are_not_known() -> None:
    r = Recipients(seconds=60, per_transaction=2)
    for rcpt in ("a@x", "b@x", "c@x"):
        r.add(A, rcpt, now=0)
    assert r.take(A, now=0) is None  # never refuse a message for the two of three it knows
    r.add(A, "a@x", now=0)
    assert r.take(A, now=0) == LetIn(("a@x",), 1)


def test_recipients_expire_and_the_oldest_transactions_go_first() -> None:
    r = Recipients(seconds=60, most=2)
    r.add(Transaction("c", "1"), "a@x", now=0)
    r.add(Transaction("c", "2"), "a@x", now=10)
    r.add(Transaction("c", "3"), "a@x", now=20)
    assert len(r) == 2 and r.take(Transaction("c", "1"), now=20) == LetIn((), 0)
    assert r.take(Transaction("c", "2"), now=69) == LetIn(("a@x",), 1)
    assert r.take(Transaction("c", "3"), now=80) == LetIn((), 0)  # expired at 80


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["a@x", "b@x", "c@x", "d@x"]), st.integers(0, 3)),
        max_size=200,
    )
)
def test_recipients_stay_bounded_whatever_clients_send(steps: list[tuple[int, str, int]]) -> None:
    r = Recipients(seconds=5, most=8, per_transaction=3)
    now = 0.0
    for tx, rcpt, tick in steps:
        now += tick
        r.add(Transaction("c", str(tx)), rcpt, now)
        assert len(r) <= 8 and r.remembered <= 8
        assert r.remembered == sum(len(kept) for _, kept in r._seen.values())
        assert len(r.overflowed) <= len(r)
        assert all(len(kept) <= 3 for _, kept in r._seen.values())


def test_one_client_cannot_make_the_daemon_remember_more_recipients_than_it_may_hold() -> None:
    """Transactions without SIZE= hold no room: only the count of recipients bounds them."""
    r = Recipients(seconds=3600, most=100)
    for n in range(20):
        for m in range(1000):
            r.add(Transaction("203.0.113.9", f"i{n}"), f"roomy+{m}@x", now=0)
    assert r.remembered <= 100
    assert r.take(Transaction("203.0.113.9", "i19"), now=0) is None  # its recipients not all known
