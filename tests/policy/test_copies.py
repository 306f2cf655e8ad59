"""One SMTP transaction naming one mailbox several times under different details
(``roomy+a``, ``roomy+b``, ``roomy+c``): each RCPT is a copy of the message the MTA delivers,
held apart. So they must fit together, other clients see every copy held, and at END-OF-MESSAGE
each copy is weighed with the others. (Held under one key per mailbox, each new detail replaced
the last: any number of copies got into a mailbox with room for two.)
"""

from __future__ import annotations

import time

import pytest

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_stage import ask, end_of_message

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
MESSAGE = 4_000  # two copies fit (8,000), three do not (12,000)
LOCAL, DOMAIN = ROOMY.split("@")


def held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


@pytest.fixture
def service(site: Site) -> PolicyService:
    # client_hold 100%: one client's share never decides here, only the room.
    return site.service(site.config(client_hold="100%"), Metrics())


def test_a_third_detail_of_one_mailbox_in_one_transaction_is_not_let_in_beyond_the_room(
    service: PolicyService,
) -> None:
    """Attack: one transaction, RCPT TO:<roomy+a>, <roomy+b>, <roomy+c> ... each with SIZE=4000,
    into a mailbox with 9,000 bytes of room. Expected: the first two are let in (8,000 fits) and
    held as two copies; the third (12,000 in all) is deferred, as the second is when two copies do
    not fit (tests/policy/test_transactions.py)."""
    connection = Session()
    assert ask(service, request(f"{LOCAL}+a@{DOMAIN}", MESSAGE, instance="A"), connection) == "DUNNO"
    assert ask(service, request(f"{LOCAL}+b@{DOMAIN}", MESSAGE, instance="A"), connection) == "DUNNO"
    third = ask(service, request(f"{LOCAL}+c@{DOMAIN}", MESSAGE, instance="A"), connection)
    answers = [third] + [
        ask(service, request(f"{LOCAL}+{n}@{DOMAIN}", MESSAGE, instance="A"), connection) for n in range(10)
    ]
    let_in = 2 + answers.count("DUNNO")
    assert let_in * MESSAGE <= ROOM, (
        f"{let_in} copies of {MESSAGE} bytes let into a mailbox with {ROOM} bytes of room "
        f"(the transaction holds {held(service)} bytes for them)"
    )


def test_room_held_for_two_details_of_one_mailbox_counts_both_copies_for_other_clients(
    service: PolicyService,
) -> None:
    """Attack: one client's transaction names roomy+a and roomy+b (two copies of 4,000 bytes,
    8,000 of the 9,000 free); meanwhile another client declares 4,000 bytes for roomy. Expected:
    the other client is deferred (12,000 would not fit while both copies may land)."""
    assert ask(service, request(f"{LOCAL}+a@{DOMAIN}", MESSAGE, instance="A")) == "DUNNO"
    assert ask(service, request(f"{LOCAL}+b@{DOMAIN}", MESSAGE, instance="A")) == "DUNNO"
    holding = held(service)
    other = ask(service, request(ROOMY, MESSAGE, instance="B", client="198.51.100.7"))
    assert other.startswith("452"), (
        f"another client's {MESSAGE} bytes let in ({other}) while two copies of {MESSAGE} are on their way"
        f" into {ROOM} bytes of room; held for them: {holding} bytes"
    )


def test_postfix_end_of_message_for_three_details_of_one_mailbox_holds_each_copy_let_in(
    service: PolicyService,
) -> None:
    """Attack: through Postfix, without SIZE= (nothing held at RCPT), RCPT TO:<roomy+a>,
    <roomy+b>, <roomy+c>, then a 4,000-byte message: three copies, 12,000 bytes, for 9,000 of
    room. Expected: two copies fit and are held in flight (8,000 bytes: other clients see them);
    the third does not, and Postfix having one answer for the message, it is accepted for the
    copies that fit and the delivery agent decides the third (as for a recipient of another
    mailbox). Each copy had been weighed alone, and the refused one let go of every copy."""
    connection = Session()
    for detail in "abc":
        assert ask(service, request(f"{LOCAL}+{detail}@{DOMAIN}", instance="A"), connection) == "DUNNO"
    assert ask(service, end_of_message(MESSAGE, 3, instance="A"), connection) == "DUNNO"
    assert held(service) == 2 * MESSAGE
