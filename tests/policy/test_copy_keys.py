"""Each recipient of one mailbox in one transaction that the MTA delivers apart is a copy held
apart, keyed (transaction, mailbox, copy) with copy the local part as sent ("" for the
mailbox's own). Two recipients the MTA delivers as two copies (``roomy`` and ``roomy+``,
``roomy+x`` and ``roomy-x`` with two delimiters) never share a key: the second would replace
the first's hold."""

from __future__ import annotations

import time

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_stage import ask

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
MESSAGE = 5_000  # one copy fits, two do not
LOCAL, DOMAIN = ROOMY.split("@")


def _held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


def test_the_plain_address_and_an_empty_detail_are_two_copies(site: Site) -> None:
    """Attack: one transaction, RCPT TO:<roomy@example.org> SIZE=5000, then
    RCPT TO:<roomy+@example.org> (an empty detail: Exim's ``local_part_suffix = +*`` and
    Postfix's recipient_delimiter route it to roomy, a distinct envelope recipient, so a second
    copy is delivered), into a mailbox with 9,000 bytes of room. Both take the copy key ""
    (``_Target.copy`` is ``folder or ""``), so the second replaces the first's hold.
    Expected: the second is deferred (two copies, 10,000 bytes, do not fit), or at least both
    copies are held (10,000 bytes)."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, request(ROOMY, MESSAGE, instance="A"), connection) == "DUNNO"
    second = ask(service, request(f"{LOCAL}+@{DOMAIN}", MESSAGE, instance="A"), connection)
    assert second != "DUNNO" or _held(service) == 2 * MESSAGE, (
        f"two copies of {MESSAGE} bytes let into {ROOM} bytes of room, {_held(service)} bytes held for them"
    )


def test_one_detail_behind_two_delimiters_is_two_copies(site: Site) -> None:
    """Attack: with ``folder_delimiter = "+-"`` (Postfix's and Dovecot's recipient_delimiter
    may hold several), one transaction names roomy+x and roomy-x, SIZE=5000 each: two envelope
    recipients, two deliveries into the same mailbox (folder x). Both take the copy key "x", so
    the second replaces the first's hold and two copies get into room for one.
    Expected: the second is deferred (or both copies are held)."""
    service = site.service(site.config(client_hold="100%", folder_delimiter="+-"), Metrics())
    connection = Session()
    assert ask(service, request(f"{LOCAL}+x@{DOMAIN}", MESSAGE, instance="A"), connection) == "DUNNO"
    second = ask(service, request(f"{LOCAL}-x@{DOMAIN}", MESSAGE, instance="A"), connection)
    assert second != "DUNNO" or _held(service) == 2 * MESSAGE, (
        f"two copies of {MESSAGE} bytes let into {ROOM} bytes of room, {_held(service)} bytes held for them"
    )
