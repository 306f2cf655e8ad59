"""Postfix asks at RCPT and at END-OF-MESSAGE (from the recipients remembered as sent) with the
case the client gave, and its cleanup keeps two recipients that differ only in case as two,
each delivered (Dovecot files them in ``Big`` and ``big``): two copies. (Exim's DATA check is
asked as Exim asked at RCPT, in lower case: tests/policy/test_exim_copy_key_case.py.)"""

from __future__ import annotations

import time

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_stage import ask, end_of_message

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
MESSAGE = 5_000  # one copy fits, two do not
LOCAL, DOMAIN = ROOMY.split("@")


def _held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


def test_postfix_details_differing_in_case_are_two_copies(site: Site) -> None:
    """Scenario: through Postfix, one transaction names ``roomy+Big`` and ``roomy+big``
    (SIZE=5000 each) into roomy, which has 9,000 bytes of room: two envelope recipients,
    two deliveries, 10,000 bytes.

    Expected: the second RCPT is deferred (both copies do not fit), or both copies are held
    (10,000 bytes), never one hold for two copies."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, request(f"{LOCAL}+Big@{DOMAIN}", MESSAGE, instance="A"), connection) == "DUNNO"
    second = ask(service, request(f"{LOCAL}+big@{DOMAIN}", MESSAGE, instance="A"), connection)
    assert second != "DUNNO" or _held(service) == 2 * MESSAGE, (
        f"two copies of {MESSAGE} bytes let into {ROOM} bytes of room, {_held(service)} bytes held for them"
    )


def test_postfix_end_of_message_holds_both_copies_differing_in_case(site: Site) -> None:
    """Scenario: through Postfix without SIZE= (nothing held at RCPT), one transaction names
    ``roomy+Big`` and ``roomy+big``; at END-OF-MESSAGE (recipient_count=2, the recipients
    remembered as sent) the message is 4,000 bytes: two copies, 8,000 bytes, which fit in the
    9,000 bytes of room. The message is accepted and goes in flight.

    Expected: 8,000 bytes in flight (both copies), so that a next 2,000-byte message from
    another transaction is deferred (8,000 + 2,000 > 9,000)."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, request(f"{LOCAL}+Big@{DOMAIN}", instance="A"), connection) == "DUNNO"
    assert ask(service, request(f"{LOCAL}+big@{DOMAIN}", instance="A"), connection) == "DUNNO"
    assert ask(service, end_of_message(4_000, 2, instance="A"), connection) == "DUNNO"
    after = _held(service)
    other = ask(service, request(ROOMY, 2_000, client="198.51.100.7", instance="B"), Session())
    assert after == 8_000 and other != "DUNNO", (
        f"two 4,000-byte copies accepted: {after} bytes held; a 2,000-byte message next answered {other!r}"
    )
