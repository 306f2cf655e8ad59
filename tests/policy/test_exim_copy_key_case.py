"""Copies are keyed by the local part case-blind: Exim's RCPT ACL sends ``$local_part`` (lower-
cased) and its DATA ACL each ``$recipients`` entry as the client sent it; the two checks of one
recipient must find one hold, the DATA check's real size in place of the RCPT's."""

from __future__ import annotations

import time

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site
from tests.policy.test_data_stage import ask, exim_data

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
MESSAGE = 5_000  # fits once, not twice
LOCAL, DOMAIN = ROOMY.split("@")


def exim_rcpt(recipient: str, size: int, instance: str = "A") -> bytes:
    """What the generated Exim RCPT ACL sends (mta/exim.py: ``recipient=$local_part@$domain``)."""
    return (
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={recipient}\nsize={size}\n"
        f"instance={instance}\nclient_address=192.0.2.1\n\n"
    ).encode()


def _held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


def test_exim_data_check_of_a_detail_with_capitals_replaces_its_rcpt_hold(site: Site) -> None:
    """Scenario: through the generated Exim ACLs, a client sends one message (SIZE=5000) to
    ``roomy+News@example.org``; roomy has 9,000 bytes of room. The RCPT ACL sends
    ``$local_part@$domain``, and Exim lowercases ``$local_part`` in the RCPT ACL unless
    ``control = caseful_local_part`` (which the generated ACL does not set): the daemon is asked
    about ``roomy+news``. The DATA ACL asks about each entry of ``$recipients``, which keeps
    the case the client gave: ``roomy+News``. One recipient, one copy, 5,000 bytes.

    Expected: the DATA check weighs the real 5,000 bytes in place of what the transaction holds
    for that recipient (README: "the answer replaces what the transaction held at RCPT, never
    adds to it"): accepted (DUNNO), 5,000 bytes held."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, exim_rcpt(f"{LOCAL}+news@{DOMAIN}", MESSAGE), connection) == "DUNNO"
    at_data = ask(service, exim_data(f"{LOCAL}+News@{DOMAIN}", MESSAGE), connection)
    assert at_data == "DUNNO" and _held(service) == MESSAGE, (
        f"one 5,000-byte copy into 9,000 bytes of room: answered {at_data!r} at DATA, {_held(service)} bytes held"
    )
